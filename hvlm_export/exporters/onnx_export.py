"""torch -> ONNX: export a mechanism, a config-built stack or any nn.Module of ours.

Pipeline (each step raises :class:`ExportError` with the step it failed at):

1. resolve the model (registry name, config YAML/dict, or module; ``registry.resolve_model``)
   and cast it to the precision (``modules.cast_module``: parameters a module lists in
   ``_keep_fp32``, such as Mamba's ``A_log``, stay float32);
2. ``torch.onnx.export(dynamo=True)`` with named inputs/outputs and ``torch.export.Dim``
   dynamic axes; ``hvlm::selective_scan`` is translated to one ``hvlm::SelectiveScan`` node,
   attention softmax to a float32 softmax (precision policy in :mod:`.translations`);
3. add the SelectiveScan FunctionProto (or inline it for ``scan="inline"``) and metadata;
4. write the file and the weights beside it atomically, then ``onnx.checker`` (full check)
   and shape inference on the written file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import onnx
import onnx_ir as ir
import torch
from torch import nn

from hvlm_export import __version__
from hvlm_export.artifacts import SCAN_DOMAIN, SCAN_OP, encode_metadata, weights_path
from hvlm_export.errors import ExportError, HvlmExportError
from hvlm_export.exporters import scan_body
from hvlm_export.exporters.translations import translation_table
from hvlm_export.modules import cast_module
from hvlm_export.modules.stack import StackConfig
from hvlm_export.registry import DTYPES, PRECISIONS, ModelSpec, ResolvedModel, resolve_model

__all__ = ["export_onnx", "OPSETS", "BF16_OPSET"]

log = logging.getLogger(__name__)

BF16_OPSET = 22  # Conv and friends take bfloat16 from opset 22
#: Opsets the dynamo exporter emits and ONNX Runtime / TensorRT 10-11 all read.
OPSETS = range(18, 24)
ScanMode = Literal["custom", "inline"]
Precision = Literal["fp32", "fp16", "bf16"]
_EXTERNAL_DATA_BYTES = 1 << 30  # parameters above 1 GiB go to an external .data file


@contextlib.contextmanager
def _scan_schema_registered() -> Iterator[None]:
    """Register the SelectiveScan schema for the duration of an export (onnxscript needs it)."""
    already = onnx.defs.has(SCAN_OP, SCAN_DOMAIN)
    if not already:
        onnx.defs.register_schema(scan_body.scan_schema())
    try:
        yield
    finally:
        if not already:
            onnx.defs.deregister_schema(SCAN_OP, 1, SCAN_DOMAIN)


def _dynamic_shapes(spec: ModelSpec, dynamic: bool) -> dict[str, dict[int, Any]] | None:
    """Dim.DYNAMIC for every dynamic axis: torch.export may record benign guards (contiguity
    checks on padded chunk counts) but errors out rather than specialising a dynamic axis."""
    if not dynamic:
        return None
    return {name: {ax: torch.export.Dim.DYNAMIC for ax in spec.dynamic_axes[name]} for name in spec.inputs}


def _trace_inputs(example_inputs: tuple[torch.Tensor, ...], spec: ModelSpec,
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
        for axis, label in spec.dynamic_axes[name].items():
            if tensor.shape[axis] == 0:
                raise ExportError(f"example input {name!r} is empty on axis {axis}")
            want = max(2, trace_length if label in ("seq", "mem_seq") else 2)
            if tensor.shape[axis] < want:
                tensor = tensor.repeat_interleave(-(-want // tensor.shape[axis]), dim=axis).narrow(axis, 0, want)
        widened.append(tensor)
    return tuple(widened)


def _probe_inputs(traced: tuple[torch.Tensor, ...], spec: ModelSpec,
                  kwargs: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
    """Inputs one larger on the batch axis and, on sequence axes, more than twice as long as
    traced and as the spec's trace length (so every chunk/block/group count differs)."""
    probes = []
    for name, tensor in zip(spec.inputs, traced, strict=True):
        for axis in spec.dynamic_axes[name]:
            longest = max(tensor.shape[axis], spec.trace_length(kwargs))
            size = tensor.shape[axis] + 1 if axis == 0 else 2 * longest + 3
            tensor = tensor.repeat_interleave(-(-size // tensor.shape[axis]), dim=axis).narrow(axis, 0, size)
        probes.append(tensor)
    return tuple(probes)


def _check_generalises(onnx_path: Path, module: nn.Module, probes: tuple[torch.Tensor, ...], spec: ModelSpec,
                       precision: str, traced_shapes: list[tuple[int, ...]]) -> None:
    """Run the written graph with ONNX Runtime at other sizes than it was traced at and compare
    with the module: a size frozen during tracing shows up here, not in a user's deployment.
    (bf16 graphs are skipped: ONNX Runtime's CPU provider has no bfloat16 MatMul.)"""
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
        got = session.run(None, {n: p.numpy() for n, p in zip(spec.inputs, probes, strict=True)})[0]
    except Exception as err:  # ORT raises several types; all mean the graph does not run there
        raise ExportError(f"the exported {spec.name} graph fails at input shapes {shapes}: "
                          f"{type(err).__name__}: {str(err)[:400]}", hint) from err
    with torch.no_grad():
        want = module(*probes).float().numpy()
    scale = float(abs(want).max()) or 1.0
    bound = (1e-3 if precision == "fp32" else 3e-2) * scale  # far above rounding, far below a wrong size
    err = float(abs(got.astype("float32") - want).max()) if got.shape == want.shape else float("inf")
    if not err <= bound:
        raise ExportError(f"the exported {spec.name} graph disagrees with the module at input shapes {shapes}: "
                          f"max abs difference {err:.3g} (output shape {got.shape} vs {want.shape}, "
                          f"output max {scale:.3g})", hint)


def _axis_names(program: torch.export.ExportedProgram, spec: ModelSpec) -> dict[str, str]:
    """torch's symbols (s27, ...) -> the spec's axis names (batch, seq, mem_seq)."""
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    mapping = {}
    for node, name in zip(placeholders, spec.inputs, strict=True):
        shape = node.meta["val"].shape
        for axis, label in spec.dynamic_axes[name].items():
            mapping[str(shape[axis])] = label
    return mapping


def _check_options(opset: int | None, precision: str, scan: str) -> None:
    if opset is not None and opset not in OPSETS:
        raise ExportError(f"unsupported opset {opset}", f"choose one of {OPSETS.start}..{OPSETS.stop - 1}.")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}", f"valid choices are {', '.join(PRECISIONS)}.")
    if scan not in ("custom", "inline"):
        raise ExportError(f"unknown scan mode {scan!r}", "valid choices are 'custom', 'inline'.")


def _check_output_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix != ".onnx":
        raise ExportError(f"output path {str(path)!r} must end in .onnx")
    if not path.parent.is_dir():
        raise ExportError(f"output directory {str(path.parent)!r} does not exist", "create it first.")
    if not os.access(path.parent, os.W_OK):
        raise ExportError(f"output directory {str(path.parent)!r} is not writable")
    return path


def _prepare(resolved: ResolvedModel, checkpoint, precision: str, example_inputs, batch: int, seq_len: int):
    """The module in eval mode at the precision, and example inputs of that dtype."""
    module = resolved.module
    if checkpoint is not None:
        _load_checkpoint(module, checkpoint)
    dtype = DTYPES[precision]
    module = cast_module(module.eval(), dtype)
    if example_inputs is None:
        example_inputs = resolved.spec.example_inputs(module, batch=batch, seq_len=seq_len, dtype=dtype)
    example_inputs = tuple(t.to(dtype) for t in example_inputs)
    if len(example_inputs) != len(resolved.spec.inputs):
        raise ExportError(
            f"{resolved.spec.name} takes inputs {resolved.spec.inputs}, got {len(example_inputs)} example tensors"
        )
    return module, example_inputs


def export_onnx(
    model: nn.Module | str | os.PathLike | StackConfig | Mapping[str, Any],
    path: str | os.PathLike,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
    *,
    dynamic: bool = True,
    opset: int | None = None,
    precision: Precision = "fp32",
    scan: ScanMode = "custom",
    checkpoint: str | os.PathLike | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    batch: int = 2,
    seq_len: int = 48,
    external_data: bool | None = None,
) -> Path:
    """Export ``model`` to ONNX at ``path`` and return the path.

    Args:
        model: an nn.Module, a registry name (``hvlm-export list``) or a config YAML/dict.
        path: the .onnx file to write; weights go beside it as ``<stem>.weights.pt``.
        example_inputs: tensors (x[, memory]); default random of (batch, seq_len).
        dynamic: batch and sequence axes dynamic (default) or fixed to the example shape.
        opset: default-domain opset (default: the spec's, 20, or 22 for bf16 where Conv
            first takes bfloat16; 18..23).
        precision: 'fp32', 'fp16' or 'bf16': the graph's types (TensorRT 11 reads precision
            from them); softmax, exp, the scan and norm statistics stay float32.
        scan: 'custom' (one hvlm::SelectiveScan node + FunctionProto) or 'inline' (the body's
            standard ops in the graph, no custom domain).
        checkpoint: a state_dict (.pt) loaded with strict=True before export.
        model_kwargs: constructor overrides for a registry name (e.g. {"dim": 256}).
        batch, seq_len: size of the default example inputs.
        external_data: store weights in ``<name>.data`` (default: when over 1 GiB).
    """
    _check_options(opset, precision, scan)
    path = _check_output_path(path)
    resolved = resolve_model(model, model_kwargs)
    if opset is None:
        opset = max(resolved.spec.opset, BF16_OPSET) if precision == "bf16" else resolved.spec.opset
    module, example_inputs = _prepare(resolved, checkpoint, precision, example_inputs, batch, seq_len)

    kwargs = resolved.source.get("kwargs", {})
    traced = _trace_inputs(example_inputs, resolved.spec, kwargs) if dynamic else example_inputs
    program = _torch_export(module, traced, resolved.spec, dynamic, opset, precision)
    ir_model = program.model
    _add_scan_function(ir_model, opset, scan)
    meta = _metadata(resolved, precision, scan, opset, dynamic, example_inputs, path)
    ir_model.metadata_props.update(encode_metadata(meta))
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > _EXTERNAL_DATA_BYTES
    verify = None
    if dynamic:
        probes = _probe_inputs(traced, resolved.spec, kwargs)
        traced_shapes = [tuple(t.shape) for t in traced]
        verify = functools.partial(_check_generalises, module=module, probes=probes, spec=resolved.spec,
                                   precision=precision, traced_shapes=traced_shapes)
    _write(ir_model, module, resolved, path, external_data if external_data is not None else big, verify)
    return path


def _load_checkpoint(module: nn.Module, checkpoint: str | os.PathLike) -> None:
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ExportError(f"checkpoint {str(checkpoint)!r} does not exist") from err
    except Exception as err:  # torch raises several types for a bad file
        raise ExportError(f"checkpoint {str(checkpoint)!r} is not a readable state_dict: {err}") from err
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as err:
        raise ExportError(f"checkpoint {str(checkpoint)!r} does not fit the model: {err}") from err


def _torch_export(module, example_inputs, spec, dynamic, opset, precision):
    """torch.export (non-strict), then ONNX translation of that program: no fallback strategies."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            program = torch.export.export(module, example_inputs, dynamic_shapes=_dynamic_shapes(spec, dynamic), strict=False)
        except Exception as err:  # torch.export raises many types; all mean "not exportable as is"
            raise ExportError(
                f"step 1/2 (torch.export) failed for {spec.name}: {type(err).__name__}: {str(err)[:2000]}",
                "a module of ours failing here is a bug in hvlm-export; please report it.",
            ) from err
    with _scan_schema_registered(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            onnx_program = torch.onnx.export(
                program,
                (),
                dynamo=True,
                input_names=list(spec.inputs),
                output_names=list(spec.outputs),
                opset_version=opset,
                custom_translation_table=translation_table(precision),
                optimize=True,
                verbose=False,
            )
        except HvlmExportError:
            raise
        except Exception as err:  # torch.onnx raises many exception types, all fatal here
            raise ExportError(
                f"step 2/2 (ONNX translation) failed for {spec.name}: {type(err).__name__}: {str(err)[:2000]}",
                "this is a bug in hvlm-export if the model is one of ours; please report it.",
            ) from err
    if dynamic:
        onnx_program.rename_axes(_axis_names(program, spec))
        _check_dynamic(onnx_program.model, spec)
    return onnx_program


def _check_dynamic(model: ir.Model, spec: ModelSpec) -> None:
    """Every declared dynamic axis of every input and output must still carry its name."""
    frozen = []
    for value in [*model.graph.inputs, *model.graph.outputs]:
        for axis, label in spec.dynamic_axes.get(value.name, {}).items():
            dim = value.shape[axis] if value.shape is not None else None
            if not isinstance(dim, ir.SymbolicDim) or dim.value != label:
                frozen.append(f"{value.name}[{axis}] is {dim!r}, expected {label!r}")
    if frozen:
        raise ExportError(
            "the exported graph does not keep its dynamic axes: " + "; ".join(frozen),
            "the model has a Python branch or reshape that fixes this size; please report it.",
        )


def _add_scan_function(model: ir.Model, opset: int, scan: ScanMode) -> None:
    uses_scan = any(n.domain == SCAN_DOMAIN for n in model.graph.all_nodes())
    if not uses_scan:
        model.opset_imports.pop(SCAN_DOMAIN, None)
        return
    fn = ir.serde.deserialize_function(scan_body.scan_function(opset))
    model.functions[fn.identifier()] = fn
    model.opset_imports[SCAN_DOMAIN] = 1
    if scan == "inline":
        ir.passes.common.InlinePass()(model)
        ir.passes.common.RemoveUnusedFunctionsPass()(model)
        model.opset_imports.pop(SCAN_DOMAIN, None)


def _metadata(resolved, precision, scan, opset, dynamic, example_inputs, path) -> dict[str, Any]:
    spec = resolved.spec
    return {
        "version": __version__,
        "source": resolved.source,
        "mechanism": spec.name,
        "precision": precision,
        "scan": scan,
        "opset": opset,
        "dynamic": dynamic,
        "input_shapes": {n: list(t.shape) for n, t in zip(spec.inputs, example_inputs, strict=True)},
        "dynamic_axes": spec.dynamic_axes,
        "weights": weights_path(path).name,
        "torch": torch.__version__,
    }


def _write(model: ir.Model, module: nn.Module, resolved: ResolvedModel, path: Path, external: bool,
           verify: Callable[[Path], None] | None = None) -> None:
    """Write model (+ .data) and weights into a temp dir, check (and ``verify(tmp_path)``),
    then move them into place: nothing is left behind when a check fails."""
    weights = weights_path(path)
    try:
        tmp_dir = tempfile.TemporaryDirectory(dir=path.parent, prefix=".hvlm-export-")
    except OSError as err:
        raise ExportError(f"cannot write to {str(path.parent)!r}: {err}", "choose a writable directory.") from err
    with tmp_dir as tmp:
        tmp_model = Path(tmp) / path.name
        data_name = path.name + ".data"
        ir.save(model, tmp_model, external_data=data_name if external else None)
        payload = module if resolved.source["kind"] == "module" else module.state_dict()
        torch.save(payload, Path(tmp) / weights.name)
        try:
            onnx.checker.check_model(str(tmp_model), full_check=True)
            onnx.shape_inference.infer_shapes_path(str(tmp_model), str(Path(tmp) / "inferred.onnx"))
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
            hint = "this is a bug; please report it."
            if "bfloat16" in str(err):
                hint = f"an op takes bfloat16 only from a newer opset; use --opset {BF16_OPSET} or higher."
            raise ExportError(f"the exported graph failed onnx.checker: {err}", hint) from err
        if verify is not None:
            verify(tmp_model)
        os.replace(tmp_model, path)
        if external:
            os.replace(Path(tmp) / data_name, path.parent / data_name)
        os.replace(Path(tmp) / weights.name, weights)
    log.info("wrote %s (+ %s)", path, weights.name)
