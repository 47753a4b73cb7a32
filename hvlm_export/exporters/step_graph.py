"""Streaming step graphs (DESIGN.md section 7): ``export_onnx(..., mode="step")``.

The graph of one ``layer.step`` in the decoder-with-past convention::

    inputs   x (batch, chunk, E), past.<name> for every state tensor
    outputs  y (batch, chunk, E), present.<name>

batch and chunk dynamic (and, for a growing key/value cache, its length: 'past' on inputs,
symbolic on outputs). The metadata lists every state tensor (name, shape with 'batch' /
'past', dtype, initial fill), so a runtime without torch can create the initial state
(``hvlm_export.runtime.Stream``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from hvlm_export.errors import ExportError
from hvlm_export.modules._streaming import StateSpec, Streamable
from hvlm_export.registry import ModelSpec

__all__ = ["StepModule", "step_spec", "state_metadata", "step_example", "step_probes"]

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int64: "int64"}
#: tokens streamed before the traced step, so that a growing cache is not empty while tracing
_TRACE_PREFIX, _PROBE_PREFIX = 3, 7


class StepModule(nn.Module):
    """``forward(x, *past) -> (y, *present)``: one streaming step as a plain tensor function."""

    def __init__(self, layer: Streamable) -> None:
        super().__init__()
        self.layer = layer
        self.names = [s.name for s in layer.state_specs()]

    def forward(self, x: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, state = self.layer._step(x, dict(zip(self.names, past, strict=True)))
        return (y, *(state[n] for n in self.names))


def _require_streamable(layer: nn.Module, name: str) -> Streamable:
    reason = layer.streaming_error() if isinstance(layer, Streamable) else "it has no init_state/step"
    if reason is not None:
        raise ExportError(f"{name} cannot be exported as a step graph: {reason}",
                          "step graphs are for causal layers (DESIGN.md section 7); export mode='forward'.")
    return layer


def step_spec(spec: ModelSpec, layer: nn.Module) -> tuple[ModelSpec, list[StateSpec]]:
    """The step graph's ModelSpec (inputs x + past.*, outputs y + present.*, dynamic axes)."""
    states = _require_streamable(layer, spec.name).state_specs()
    axes: dict[str, dict[int, str | None]] = {"x": {0: "batch", 1: "chunk"}, "y": {0: "batch", 1: "chunk"}}
    for s in states:
        axes[f"past.{s.name}"] = {i: d for i, d in enumerate(s.shape) if d in ("batch", "past")}
        axes[f"present.{s.name}"] = {i: ("batch" if d == "batch" else None)
                                     for i, d in enumerate(s.shape) if d in ("batch", "past")}
    inputs = ("x", *(f"past.{s.name}" for s in states))
    outputs = ("y", *(f"present.{s.name}" for s in states))
    if "memory" in spec.inputs:
        raise ExportError(f"{spec.name} takes a memory input; step graphs take x only")
    return dataclasses.replace(spec, inputs=inputs, outputs=outputs, dynamic_axes=axes), states


def state_metadata(states: list[StateSpec], dtype: torch.dtype) -> list[dict]:
    """The state list recorded in the file, dtypes resolved for the export precision."""
    return [{**s.to_json(), "dtype": _DTYPE_NAMES[s.resolve_dtype(dtype)]} for s in states]


@torch.no_grad()
def _state_after(layer: Streamable, x: torch.Tensor, prefix: int) -> dict[str, torch.Tensor]:
    state = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    return layer._step(x[:, :prefix], state)[1]


def step_example(layer: Streamable, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(x chunk, *state after a few tokens): what the step graph is traced with."""
    state = _state_after(layer, torch.cat([x, x], dim=1), _TRACE_PREFIX)
    return (x, *(state[s.name] for s in layer.state_specs()))


def step_probes(layer: Streamable, traced: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Other shapes than traced: batch + 1, chunk 2T + 3, state after more tokens."""
    x = traced[0]
    b, t, _ = x.shape
    probe = x.repeat(2, 3, 1)[: b + 1, : 2 * t + 3]
    state = _state_after(layer, torch.cat([probe, probe], dim=1), _PROBE_PREFIX)
    return (probe, *(state[s.name] for s in layer.state_specs()))
