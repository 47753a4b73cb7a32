"""Tracing a dynamic graph and proving it generalises (used by every export).

* :func:`dynamic_shapes` / :func:`axis_names`: ``torch.export.Dim.DYNAMIC`` on the spec's
  dynamic axes, and torch's symbols mapped back to the spec's axis names;
* :func:`trace_inputs`: example inputs lengthened past every window / chunk / stride, since
  torch.export bakes in a size that is 0 or 1 while tracing (also a derived count);
* :func:`check_dynamic`: every declared dynamic axis of the ONNX graph is still symbolic;
* :func:`check_generalises`: the written graph run by ONNX Runtime at other shapes than it
  was traced at, compared with the module, before the file is moved into place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from hvlm_export.errors import ExportError
from hvlm_export.exporters import step_graph
from hvlm_export.registry import USER_MODULE, ModelSpec, spec_for_user_module
from hvlm_export.user_models import example_shapes as concrete_shapes
from hvlm_export.user_models import input_names, output_names, parse_example_shape

__all__ = ["KeywordInputs", "traced_module", "masked_spec", "user_spec", "dynamic_shapes", "axis_names", "trace_inputs", "probe_inputs", "check_dynamic", "check_generalises"]

#: axis names that follow the sequence (lengthened to the trace length while tracing)
SEQUENCE_AXES = ("seq", "mem_seq", "chunk")


class KeywordInputs(nn.Module):
    """``forward(*tensors)`` calling ``layer`` with the tensors as keyword arguments named
    ``names``: graph inputs bound by name (``attention_mask`` must not land on a block's
    ``memory`` parameter), whatever the forward's parameter order."""

    def __init__(self, layer: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.layer = layer
        self.names = list(names)

    def forward(self, *inputs: torch.Tensor):
        return self.layer(**dict(zip(self.names, inputs, strict=True)))


def traced_module(resolved, module: nn.Module, example_inputs: tuple[torch.Tensor, ...], mode: str, with_mask: bool,
                  dtype: torch.dtype):
    """(spec, the module torch.export traces, its example inputs, extra metadata) of a mode:
    the module itself, its one streaming step, or its forward with inputs bound by name."""
    spec, target, extra = resolved.spec, module, {"mode": mode}
    if mode == "step":
        spec, states = step_graph.step_spec(resolved.spec, module)
        target, example_inputs = step_graph.StepModule(module), step_graph.step_example(module, example_inputs[0])
        extra["state"] = step_graph.state_metadata(states, dtype)
    elif with_mask:
        target = KeywordInputs(module, spec.inputs)
    return spec, target, example_inputs, extra


def masked_spec(spec: ModelSpec, mode: str) -> ModelSpec:
    """The spec with padding-mask inputs, for the forward graphs of our own mechanisms."""
    if mode != "forward":
        raise ExportError("with_mask (--with-mask) is for forward graphs",
                          "a step graph streams one sequence per batch row and needs no padding.")
    if spec.summary == USER_MODULE:
        raise ExportError(f"with_mask (--with-mask) adds the registry mechanisms' padding masks; {spec.name} is "
                          "your own module", "give its mask inputs as example shapes (--example-shape) instead.")
    return spec.with_masks()


def user_spec(module: nn.Module, example_inputs: tuple[torch.Tensor, ...] | None,
              example_shapes: Sequence[str] | Mapping[str, Sequence[int | str]] | None, batch: int, seq_len: int,
              dynamic: bool, seed: int = 0) -> tuple[ModelSpec, tuple[torch.Tensor, ...]]:
    """The spec of a user's own module and its (float32) example inputs, from example tensors
    (named after the forward's parameters; axes 0 and 1 dynamic), example shapes
    (``["x=B,L,256", ...]`` or ``{"x": ["B", "L", 256]}``: letters are dynamic axes) or, for a
    module with an int ``dim``, one (batch, seq_len, dim) input."""
    if example_inputs is not None and example_shapes:
        raise ExportError("give example_inputs or example_shapes, not both")
    if example_shapes:
        parsed = dict(parse_example_shape(t) for t in example_shapes) if not isinstance(example_shapes, Mapping) \
            else {k: list(v) for k, v in example_shapes.items()}
        names = input_names(module, list(parsed))
        shapes, axes = concrete_shapes({n: parsed[n] for n in names}, batch, seq_len, dynamic)
        gen = torch.Generator().manual_seed(seed)
        example_inputs = tuple(torch.randn(shapes[n], generator=gen) for n in names)
    elif example_inputs is not None:
        names = input_names(module, None, len(example_inputs))
        _, axes = concrete_shapes({n: list(t.shape) for n, t in zip(names, example_inputs, strict=True)}, batch,
                                  seq_len, dynamic)
    elif isinstance(getattr(module, "dim", None), int):
        names = input_names(module, None, 1)
        shapes, axes = concrete_shapes({names[0]: ["B", "L", module.dim]}, batch, seq_len, dynamic)
        example_inputs = (torch.randn(shapes[names[0]], generator=torch.Generator().manual_seed(seed)),)
    else:
        raise ExportError(f"cannot tell the inputs of {type(module).__name__} (it has no int attribute 'dim')",
                          "give example shapes: --example-shape x=B,L,256 (letters are dynamic axes), or "
                          "example_inputs in Python.")
    example_inputs = tuple(t.float() if t.is_floating_point() else t for t in example_inputs)
    spec = spec_for_user_module(module, names, output_names(module, example_inputs), axes)
    return spec, example_inputs


def dynamic_shapes(spec: ModelSpec, dynamic: bool, varargs_from: int | None = None) -> tuple | None:
    """Dim.DYNAMIC for every dynamic axis, one dict per positional input (inputs from
    ``varargs_from`` on grouped into one tuple, for a ``forward(x, *rest)``): torch.export may
    record benign guards (contiguity checks on padded chunk counts) but errors out rather
    than specialising a dynamic axis."""
    if not dynamic:
        return None
    shapes = tuple({ax: torch.export.Dim.DYNAMIC for ax in spec.dynamic_axes.get(name, {})} for name in spec.inputs)
    return shapes if varargs_from is None else (*shapes[:varargs_from], shapes[varargs_from:])


def axis_names(program: torch.export.ExportedProgram, spec: ModelSpec) -> dict[str, str]:
    """torch's symbols (s27, ...) -> the spec's axis names (batch, seq, mem_seq, ...)."""
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    mapping = {}
    for node, name in zip(placeholders, spec.inputs, strict=True):
        shape = node.meta["val"].shape
        for axis, label in spec.dynamic_axes.get(name, {}).items():
            if label is not None:
                mapping[str(shape[axis])] = label
    return mapping


def trace_inputs(example_inputs: tuple[torch.Tensor, ...], spec: ModelSpec,
                 kwargs: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
    """The example inputs lengthened for tracing a dynamic graph (the traced graph does not
    depend on the values):

    * torch.export specialises a dynamic axis whose example size is 0 or 1, so such axes are
      repeated to size 2;
    * sizes derived from the sequence length (chunk, block and group counts) can be 1 at a
      short example length, and tracing then bakes them in (a broadcast of a size-1 axis is
      indistinguishable from a fixed one): sequence axes are lengthened to the spec's trace
      length, past every window / chunk / stride of the mechanism.
    """
    trace_length = spec.trace_length(kwargs)
    widened = []
    for name, tensor in zip(spec.inputs, example_inputs, strict=True):
        for axis, label in spec.dynamic_axes.get(name, {}).items():
            if tensor.shape[axis] == 0:
                raise ExportError(f"example input {name!r} is empty on axis {axis}")
            want = max(2, trace_length if label in SEQUENCE_AXES else 2)
            if tensor.shape[axis] < want:
                tensor = tensor.repeat_interleave(-(-want // tensor.shape[axis]), dim=axis).narrow(axis, 0, want)
        widened.append(tensor)
    return tuple(widened)


def probe_inputs(traced: tuple[torch.Tensor, ...], spec: ModelSpec,
                 kwargs: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
    """Inputs one larger on the batch axis and, on sequence axes, more than twice as long as
    traced and as the spec's trace length (so every chunk/block/group count differs)."""
    probes = []
    for name, tensor in zip(spec.inputs, traced, strict=True):
        for axis in spec.dynamic_axes.get(name, {}):
            longest = max(tensor.shape[axis], spec.trace_length(kwargs))
            size = tensor.shape[axis] + 1 if axis == 0 else 2 * longest + 3
            tensor = tensor.repeat_interleave(-(-size // tensor.shape[axis]), dim=axis).narrow(axis, 0, size)
        probes.append(tensor)
    return tuple(probes)


def check_dynamic(model: ir.Model, spec: ModelSpec) -> None:
    """Every declared dynamic axis of every input and output must still be symbolic and carry
    its name (an axis declared with the name None only needs to be symbolic: a size computed
    from others, such as a key/value cache after a step)."""
    frozen = []
    for value in [*model.graph.inputs, *model.graph.outputs]:
        for axis, label in spec.dynamic_axes.get(value.name, {}).items():
            dim = value.shape[axis] if value.shape is not None else None
            if not isinstance(dim, ir.SymbolicDim) or (label is not None and dim.value != label):
                frozen.append(f"{value.name}[{axis}] is {dim!r}, expected {label or 'symbolic'!r}")
    if frozen:
        raise ExportError(
            "the exported graph does not keep its dynamic axes: " + "; ".join(frozen),
            "the model has a Python branch or reshape that fixes this size; please report it.",
        )


def check_generalises(onnx_path: Path, module: nn.Module, probes: Sequence[torch.Tensor], spec: ModelSpec,
                      precision: str, traced_shapes: list[tuple[int, ...]]) -> None:
    """Run the written graph with ONNX Runtime at other sizes than it was traced at and compare
    every output with the module's: a size frozen during tracing shows up here, not in a user's
    deployment. (bf16 graphs are skipped: ONNX Runtime's CPU provider has no bfloat16 MatMul.)"""
    if precision == "bf16":
        return
    import onnxruntime as ort

    shapes = [tuple(p.shape) for p in probes]
    hint = ("a size derived from a dynamic axis was frozen while tracing at shapes "
            f"{traced_shapes}; export with a longer example (--seq-len), or report it if the model is one of ours.")
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {n: p.numpy() for n, p in zip(spec.inputs, probes, strict=True)})
    except Exception as err:  # ORT raises several types; all mean the graph does not run there
        raise ExportError(f"the exported {spec.name} graph fails at input shapes {shapes}: "
                          f"{type(err).__name__}: {str(err)[:400]}", hint) from err
    with torch.no_grad():
        want = module(*probes)
    want = want if isinstance(want, tuple) else (want,)
    for name, g, w in zip(spec.outputs, got, want, strict=True):
        w = w.float().numpy() if w.is_floating_point() else w.numpy()
        scale = float(np.abs(w).max()) if w.size else 1.0
        bound = (1e-3 if precision == "fp32" else 3e-2) * (scale or 1.0)  # far above rounding, below a wrong size
        err = float(np.abs(g.astype(np.float64) - w).max()) if g.shape == w.shape and w.size else (
            0.0 if g.shape == w.shape else float("inf"))
        if not err <= bound:
            raise ExportError(f"the exported {spec.name} graph disagrees with the module on {name!r} at input shapes "
                              f"{shapes}: max abs difference {err:.3g} (shape {g.shape} vs {w.shape}, "
                              f"max {scale:.3g})", hint)
