"""``Stream``: feed a step graph chunk by chunk, carrying its state (DESIGN.md section 7).

    session = hvlm_export.runtime.load("mamba-step.onnx")    # exported with mode="step"
    stream = Stream(session, batch_size=1)
    y = stream.feed(prompt)            # (B, T, E) -> (B, T, E), any T >= 1
    y = stream.feed(next_token)        # (B, 1, E)
    stream.state                       # {name: array}, the carried past.* tensors
    stream.reset()                     # back to the initial state

The initial state comes from the file's metadata (name, shape with symbolic 'batch' and
'past', dtype, fill), so no torch is needed; ONNX Runtime and engine sessions alike.
"""

from __future__ import annotations

import numpy as np

from hvlm_export.errors import ArtifactError, RuntimeInputError
from hvlm_export.runtime.session import Session

__all__ = ["Stream"]


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class Stream:
    """Streaming over a step-graph session; see the module docstring.

    Args:
        session: a Session of a step graph (``runtime.load(path)``).
        batch_size: B, the number of independent streams fed together.
    """

    def __init__(self, session: Session, batch_size: int) -> None:
        meta = getattr(session, "metadata", {}) or {}
        if meta.get("mode") != "step" or "state" not in meta:
            raise ArtifactError(
                f"{type(session).__name__} is not a streaming step graph (metadata mode={meta.get('mode')!r})",
                "export it with `hvlm-export export ... --mode step` (or export_onnx(..., mode='step')).",
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise RuntimeInputError(f"batch_size must be a positive int, got {batch_size!r}")
        self.session = session
        self.batch_size = batch_size
        self.specs = list(meta["state"])
        self.reset()

    def reset(self) -> None:
        """Back to the state before the first token."""
        self._state = {
            s["name"]: np.full(tuple(self.batch_size if d == "batch" else 0 if d == "past" else d for d in s["shape"]),
                               s["fill"], dtype=_numpy_dtype(s["dtype"]))
            for s in self.specs
        }
        self.position = 0

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The carried state (the next call's past.* inputs)."""
        return dict(self._state)

    def feed(self, x: np.ndarray) -> np.ndarray:
        """Run the next chunk x (B, T, E); returns y (B, T, E) and advances the state."""
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            raise RuntimeInputError(f"x must be a numpy array (B, T, E), got {getattr(x, 'shape', type(x).__name__)}")
        if x.shape[0] != self.batch_size:
            raise RuntimeInputError(f"x has batch {x.shape[0]}, this stream was opened for batch {self.batch_size}",
                                    "open a Stream per batch size, or reset() and feed equal batches.")
        outputs = self.session.run({"x": x, **{f"past.{n}": a for n, a in self._state.items()}})
        self._state = {n: outputs[f"present.{n}"] for n in self._state}
        self.position += x.shape[1]
        return outputs["y"]
