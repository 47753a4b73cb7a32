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
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import onnx
import onnx_ir as ir
import torch
from torch import nn

from hvlm_export import __version__
from hvlm_export.artifacts import (
    SCAN_DOMAIN,
    SCAN_INPUTS,
    SCAN_OP,
    encode_metadata,
    metadata_doc_string,
    sha256_of,
    weights_path,
)
from hvlm_export.errors import ExportError, HvlmExportError
from hvlm_export.exporters import scan_body, step_graph
from hvlm_export.exporters.graph_passes import optimize_keeping_state, quiet_exporter_logs, strip_initializer_prefix
from hvlm_export.exporters.tracing import (
    axis_names,
    check_dynamic,
    check_generalises,
    dynamic_shapes,
    masked_spec,
    probe_inputs,
    trace_inputs,
    traced_module,
    user_spec,
)
from hvlm_export.exporters.translations import translation_table
from hvlm_export.modules import cast_module
from hvlm_export.modules.stack import StackConfig
from hvlm_export.registry import DTYPES, PRECISIONS, USER_MODULE, ResolvedModel, resolve_model

__all__ = ["export_onnx", "OPSETS", "BF16_OPSET"]

log = logging.getLogger(__name__)

BF16_OPSET = 22  # Conv and friends take bfloat16 from opset 22
#: Opsets the dynamo exporter emits and ONNX Runtime / TensorRT 10-11 all read.
OPSETS = range(18, 24)
ScanMode = Literal["custom", "inline"]
Mode = Literal["forward", "step"]
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


def _check_options(opset: int | None, precision: str, scan: str, mode: str) -> None:
    if mode not in ("forward", "step"):
        raise ExportError(f"unknown mode {mode!r}", "valid choices are 'forward', 'step'.")
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
    example_inputs = tuple(t.to(dtype) if t.is_floating_point() else t for t in example_inputs)
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
    mode: Mode = "forward",
    seed: int = 0,
    example_shapes: Sequence[str] | Mapping[str, Sequence[int | str]] | None = None,
    with_mask: bool = False,
) -> Path:
    """Export ``model`` to ONNX at ``path`` and return the path.

    Args:
        model: an nn.Module, a registry name (``hvlm-export list``), a config YAML/dict, or
            ``"package.module:callable"`` (called with ``model_kwargs``; recorded in the file,
            so ``validate`` rebuilds it by importing it again).
        path: the .onnx file; weights go beside it (``<stem>.weights.safetensors``, hashed).
        example_inputs: tensors in the forward's order; default random of (batch, seq_len).
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
        mode: 'forward' (the whole sequence) or 'step' (one streaming step of a causal layer:
            inputs x and past.*, outputs y and present.*; DESIGN.md section 7).
        seed: seed of the weights a registry name or config is built with (default 0), so
            that every precision and mode of one seed holds the same model; the global torch
            RNG is left as it was. Not used for an nn.Module (it has its weights).
        example_shapes: a user module's inputs by forward parameter, ``["x=B,L,256"]`` or
            ``{"x": ["B", "L", 256]}``: letters are dynamic axes (B batch, L sequence; sizes
            ``batch``/``seq_len``), numbers only: axes 0 and 1. Tuple outputs: y0, y1, ...
        with_mask: also take int64 padding masks (1 = real token): ``attention_mask`` (batch,
            seq)[, ``memory_mask`` (batch, mem_seq)]; registry mechanisms and stacks, forward.
    """
    _check_options(opset, precision, scan, mode)
    path = _check_output_path(path)
    resolved, example_inputs = _resolve(model, model_kwargs, seed, example_inputs, example_shapes, batch, seq_len,
                                        dynamic)
    resolved.spec = masked_spec(resolved.spec, mode) if with_mask else resolved.spec
    if opset is None:
        opset = max(resolved.spec.opset, BF16_OPSET) if precision == "bf16" else resolved.spec.opset
    module, example_inputs = _prepare(resolved, checkpoint, precision, example_inputs, batch, seq_len)
    kwargs = resolved.source.get("kwargs", {})
    spec, target, example_inputs, extra_meta = traced_module(resolved, module, example_inputs, mode, with_mask,
                                                             DTYPES[precision])
    traced = trace_inputs(example_inputs, spec, kwargs) if dynamic else example_inputs
    shapes = dynamic_shapes(spec, dynamic, varargs_from=1 if mode == "step" else (0 if with_mask else None))
    with quiet_exporter_logs():
        program = _torch_export(target, traced, spec, shapes, opset, precision)
    ir_model = program.model
    if target is not module:
        strip_initializer_prefix(ir_model, "layer.")  # the wrapper's attribute: the forward graph's names
    _add_scan_function(ir_model, opset, scan)
    extra_meta["seed"] = None if isinstance(model, nn.Module) else seed
    weights = weights_bytes(module)
    extra_meta["weights_sha256"] = sha256_of(weights)
    _stamp(ir_model, {**_metadata(resolved, spec, precision, scan, opset, dynamic, example_inputs, path), **extra_meta})
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > _EXTERNAL_DATA_BYTES
    verify = None
    if dynamic:
        probes = step_graph.step_probes(module, traced) if mode == "step" else probe_inputs(traced, spec, kwargs)
        verify = functools.partial(check_generalises, module=target, probes=probes, spec=spec, precision=precision,
                                   traced_shapes=[tuple(t.shape) for t in traced])
    _write(ir_model, weights, path, external_data if external_data is not None else big, verify)
    return path


def _stamp(ir_model, meta: dict[str, Any]) -> None:
    """Write the metadata into metadata_props and, as a copy that survives tools which drop
    metadata_props, into the graph's doc_string."""
    props = encode_metadata(meta)
    ir_model.metadata_props.update(props)
    ir_model.graph.doc_string = metadata_doc_string(props)


def _resolve(model, model_kwargs, seed: int, example_inputs, example_shapes, batch: int, seq_len: int,
             dynamic: bool) -> tuple[ResolvedModel, tuple[torch.Tensor, ...] | None]:
    """The model built with ``seed`` (the caller's RNG untouched) and, for a user's module,
    its spec and example inputs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        resolved = resolve_model(model, model_kwargs)
        if resolved.spec.summary == USER_MODULE:
            resolved.spec, example_inputs = user_spec(resolved.module, example_inputs, example_shapes, batch, seq_len,
                                                      dynamic, seed)
        elif example_shapes:
            raise ExportError(f"example shapes are for your own modules; {resolved.spec.name} knows its inputs "
                              f"{resolved.spec.inputs}", "use --batch / --seq-len to size them.")
    return resolved, example_inputs


def weights_bytes(module: nn.Module) -> bytes:
    """The module's state_dict as safetensors bytes (tied tensors stored once per name)."""
    from safetensors.torch import save

    return save({k: v.detach().contiguous().clone() for k, v in module.state_dict().items()})


def _load_checkpoint(module: nn.Module, checkpoint: str | os.PathLike) -> None:
    try:
        if str(checkpoint).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(checkpoint)
        else:  # weights_only: torch's restricted unpickler, no code runs
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ExportError(f"checkpoint {str(checkpoint)!r} does not exist") from err
    except Exception as err:  # torch raises several types for a bad file
        raise ExportError(f"checkpoint {str(checkpoint)!r} is not a readable state_dict: {err}") from err
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as err:
        raise ExportError(f"checkpoint {str(checkpoint)!r} does not fit the model: {err}") from err


def _torch_export(module, example_inputs, spec, shapes, opset, precision):
    """torch.export (non-strict), then ONNX translation of that program: no fallback strategies."""
    stderr = io.StringIO()  # torch.export prints the partial graph of a failure to stderr, twice
    with warnings.catch_warnings(), contextlib.redirect_stderr(stderr):
        warnings.simplefilter("ignore", FutureWarning)
        try:
            program = torch.export.export(module, example_inputs, dynamic_shapes=shapes, strict=False)
        except Exception as err:  # torch.export raises many types; all mean "not exportable as is"
            log.debug("torch.export output:\n%s", stderr.getvalue())
            raise _trace_error(spec, err) from err
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
                optimize=False,  # optimized below, parameters kept as they are
                verbose=False,
            )
            optimize_keeping_state(onnx_program.model)
        except HvlmExportError:
            raise
        except Exception as err:  # torch.onnx raises many exception types, all fatal here
            raise ExportError(
                f"step 2/2 (ONNX translation) failed for {spec.name}: {type(err).__name__}: {str(err)[:2000]}",
                "this is a bug in hvlm-export if the model is one of ours; please report it.",
            ) from err
    if shapes is not None:
        onnx_program.rename_axes(axis_names(program, spec))
        check_dynamic(onnx_program.model, spec)
    return onnx_program


def _trace_error(spec, err: Exception) -> ExportError:
    """torch.export's failure, condensed: its first paragraph and where in the code it came from."""
    text = str(err)
    summary = text.split("\n\n")[0].strip()[:600]
    where = ""
    if "The following call raised this error:" in text:
        where = text.split("The following call raised this error:", 1)[1].strip().split("\n\n")[0]
        where = "\n" + "\n".join(line.rstrip() for line in where.splitlines()[:4])
    message = f"step 1/2 (torch.export) cannot trace {spec.name}: {type(err).__name__}: {summary}{where}"
    if spec.summary == USER_MODULE:
        return ExportError(message, "the cause is in the module's code: Python control flow or shapes that depend on "
                           "tensor values (if on a value, .item(), float(t)) cannot be exported; use torch.where / "
                           "torch.cond, or move it out of forward (https://pytorch.org/docs/stable/export.html).")
    return ExportError(message, "a module of ours failing here is a bug in hvlm-export; please report it.")


def _add_scan_function(model: ir.Model, opset: int, scan: ScanMode) -> None:
    uses_scan = any(n.domain == SCAN_DOMAIN for n in model.graph.all_nodes())
    if not uses_scan:
        model.opset_imports.pop(SCAN_DOMAIN, None)
        return
    for node in model.graph.all_nodes():  # the node's outputs get shapes (tools cannot infer them)
        if node.domain == SCAN_DOMAIN:
            y, last = node.outputs
            y.shape, y.dtype = y.shape or node.inputs[0].shape, y.dtype or node.inputs[0].dtype
            last.shape = last.shape or node.inputs[SCAN_INPUTS.index("initial_state")].shape
            last.dtype = last.dtype or ir.DataType.FLOAT
    fn = ir.serde.deserialize_function(scan_body.scan_function(opset))
    model.functions[fn.identifier()] = fn
    model.opset_imports[SCAN_DOMAIN] = 1
    if scan == "inline":
        ir.passes.common.InlinePass()(model)
        ir.passes.common.RemoveUnusedFunctionsPass()(model)
        # the body's Constant(value_int=...) nodes as initializers: shape-inference tools read those
        ir.passes.common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        model.opset_imports.pop(SCAN_DOMAIN, None)


def _metadata(resolved, spec, precision, scan, opset, dynamic, example_inputs, path) -> dict[str, Any]:
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
        "outputs": list(spec.outputs),
        "torch": torch.__version__,
    }


def _write(model: ir.Model, weights_data: bytes, path: Path, external: bool,
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
        (Path(tmp) / weights.name).write_bytes(weights_data)
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
