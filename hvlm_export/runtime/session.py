"""The session contract every runtime implements, and the input checks they share."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hvlm_export.errors import RuntimeInputError

__all__ = ["Session", "TensorInfo"]


@dataclass(frozen=True)
class TensorInfo:
    """Name, numpy dtype and shape of a graph input/output; a str or None dim is dynamic."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


class Session(abc.ABC):
    """``run({name: array}) -> {name: array}`` over one loaded artefact; ``metadata`` is the
    artefact's decoded hvlm_export metadata (hvlm_export.artifacts; empty if it has none)."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    metadata: dict

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``feed`` against the inputs (names, dtypes, ranks, fixed dims), then run."""
        self._check(feed)
        return self._run(feed)

    @abc.abstractmethod
    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _check(self, feed: Mapping[str, np.ndarray]) -> None:
        missing = [n for n in self.input_names if n not in feed]
        extra = [n for n in feed if n not in self.input_names]
        if missing or extra:
            raise RuntimeInputError(
                f"input names do not match: missing {missing}, unexpected {extra}",
                f"this model takes {self.input_names}.",
            )
        for info in self.inputs:
            value = feed[info.name]
            if not isinstance(value, np.ndarray):
                raise RuntimeInputError(f"input {info.name!r} must be a numpy array, got {type(value).__name__}")
            if value.dtype != info.dtype:
                raise RuntimeInputError(
                    f"input {info.name!r} has dtype {value.dtype}, the model expects {info.dtype}",
                    f"convert it with array.astype(np.{info.dtype}).",
                )
            if value.ndim != len(info.shape):
                raise RuntimeInputError(
                    f"input {info.name!r} has rank {value.ndim} (shape {value.shape}), the model expects rank "
                    f"{len(info.shape)} {_fmt(info.shape)}"
                )
            for axis, (got, want) in enumerate(zip(value.shape, info.shape, strict=True)):
                if isinstance(want, int) and got != want:
                    raise RuntimeInputError(
                        f"input {info.name!r} has size {got} on axis {axis}, the model takes {want} there "
                        f"{_fmt(info.shape)}", self._fixed_axis_hint(info.name, axis, want))
            if any(s == 0 for s in value.shape[:2]):
                raise RuntimeInputError(f"input {info.name!r} has an empty batch or sequence axis: {value.shape}")

    def _fixed_axis_hint(self, name: str, axis: int, want: int) -> str:
        """A batch/sequence axis fixed by a static export, or a width fixed by the weights."""
        dynamic = (getattr(self, "metadata", None) or {}).get("dynamic_axes") or {}
        axes = {int(a) for a in dynamic.get(name, {})}
        if axis in axes:
            return "this file was exported with fixed shapes (--static); re-export without it to feed other sizes."
        return (f"axis {axis} of {name!r} is not a dynamic axis (the model's width or a state size, fixed by its "
                f"weights): feed {want} there.")

    def __repr__(self) -> str:
        ins = ", ".join(f"{t.name}{_fmt(t.shape)}:{t.dtype}" for t in self.inputs)
        return f"{type(self).__name__}({ins})"


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) if s is not None else "?" for s in shape) + ")"
