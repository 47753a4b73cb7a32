"""Streaming (DESIGN.md section 7): causal layers run chunk by chunk with a carried state.

    state = layer.init_state(batch_size, device=..., dtype=...)   # dict[str, Tensor]
    y_chunk, state = layer.step(x_chunk, state)                    # x_chunk (B, T, E), T >= 1

For any split of x into chunks, concatenating the step outputs equals ``forward(x)`` within
fp32 rounding. Each layer describes its state with :class:`StateSpec` entries (name, shape
with the symbolic axes 'batch' and, for a growing cache, 'past', dtype, initial fill), which
is also what an exported step graph records in its metadata, so a runtime without torch can
create the initial state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["StateSpec", "Streamable", "prefixed"]

StateDType = str  # "float32", "int64", or "model" (the dtype the layer computes in)


@dataclass(frozen=True)
class StateSpec:
    """One state tensor: shape entries are ints, 'batch' or 'past' (a cache that grows, 0 at
    the start); ``fill`` is the initial value of every element."""

    name: str
    shape: tuple[int | str, ...]
    dtype: StateDType
    fill: float = 0.0

    def resolve_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return {"float32": torch.float32, "int64": torch.int64}.get(self.dtype, model_dtype)

    def concrete_shape(self, batch_size: int) -> tuple[int, ...]:
        return tuple(batch_size if d == "batch" else 0 if d == "past" else d for d in self.shape)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "fill": self.fill}


def prefixed(prefix: str, specs: list[StateSpec]) -> list[StateSpec]:
    """The specs of a sub-layer, named ``prefix.name``."""
    return [StateSpec(f"{prefix}.{s.name}", s.shape, s.dtype, s.fill) for s in specs]


class Streamable(nn.Module):
    """Mixin: ``init_state`` / ``step`` over a layer's :meth:`state_specs` and ``_step``."""

    def streaming_error(self) -> str | None:
        """Why this layer cannot stream (e.g. it is not causal), or None."""
        return None

    def state_specs(self) -> list[StateSpec]:
        raise NotImplementedError

    def _step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _require_streaming(self) -> None:
        reason = self.streaming_error()
        if reason is not None:
            raise ValueError(f"{type(self).__name__} cannot stream: {reason}.")

    def _model_dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    def init_state(self, batch_size: int, *, device=None, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The state before the first token: a dict of tensors, see :meth:`state_specs`."""
        self._require_streaming()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        model_dtype = dtype or self._model_dtype()
        device = device if device is not None else next(self.parameters()).device
        return {
            s.name: torch.full(s.concrete_shape(batch_size), s.fill, dtype=s.resolve_dtype(model_dtype), device=device)
            for s in self.state_specs()
        }

    def step(self, x: torch.Tensor, state: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the next chunk x (B, T, E) from ``state``; returns (y (B, T, E), new state)."""
        self._require_streaming()
        self._check_state(x, state)
        return self._step(x, dict(state))

    def _check_state(self, x: torch.Tensor, state: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be the dict returned by init_state/step, got {type(state).__name__}.")
        specs = {s.name: s for s in self.state_specs()}
        missing, unknown = sorted(set(specs) - set(state)), sorted(set(state) - set(specs))
        if missing or unknown:
            raise ValueError(f"state tensors do not match: missing {missing}, unexpected {unknown}.\n"
                             f"Note: this layer's state is {sorted(specs)}; start from init_state().")
        batch = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() == 3 else None
        for name, spec in specs.items():
            value = state[name]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"state {name!r} must be a torch.Tensor, got {type(value).__name__}.")
            if value.dim() != len(spec.shape):
                raise ValueError(f"state {name!r} must have rank {len(spec.shape)} {spec.shape}, "
                                 f"got shape {tuple(value.shape)}.")
            for axis, (got, want) in enumerate(zip(value.shape, spec.shape, strict=True)):
                expected = batch if want == "batch" else (None if want == "past" else want)
                if expected is not None and got != expected:
                    raise ValueError(f"state {name!r} has size {got} on axis {axis}, expected {expected} "
                                     f"(shape {spec.shape}; batch {batch}).")
            if spec.dtype in ("float32", "int64") and value.dtype != spec.resolve_dtype(value.dtype):
                raise TypeError(f"state {name!r} must be {spec.dtype}, got {value.dtype}.")
            if spec.dtype == "model" and not value.is_floating_point():
                raise TypeError(f"state {name!r} must be floating point, got {value.dtype}.")
