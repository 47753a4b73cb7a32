"""Parity validation: eager PyTorch vs ONNX Runtime (and TensorRT) over a grid of shapes.

The reference is always the eager module in float32 with the exported weights, rebuilt from
the artefact's metadata and the weights file beside it (or given explicitly). Inputs are
random normal, rounded to the artefact's precision, and fed identically to every backend.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from dataclasses import fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from hvlm_export.errors import ArtifactError, HvlmExportError, ValidationError
from hvlm_export.registry import INPUT_SCALES, MASK_INPUTS, ModelSpec, Tolerance, default_dynamic_axes
from hvlm_export.validators.compare import compare
from hvlm_export.validators.reference import check_same_interface, load_reference
from hvlm_export.validators.report import Case, Report
from hvlm_export.validators.streaming import run_stream_cases

__all__ = ["validate", "default_shapes", "BACKENDS"]

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt")
Shape = Mapping[str, int]  # {"batch": B, "seq": L[, "mem": M]}
Tolerances = Tolerance | tuple[float, float] | Mapping[str, Any]
_TOLERANCE_FIELDS = tuple(f.name for f in fields(Tolerance))


def _case_key(label: str) -> str:
    """The grid key of a dynamic axis: batch, seq, mem (a memory's length) or the axis name."""
    return {"mem_seq": "mem"}.get(label, label)


def _extra_axes(spec: ModelSpec) -> list[str]:
    """Grid keys of the inputs' dynamic axes other than batch and seq (mem for a memory)."""
    keys = {_case_key(label) for name in spec.inputs for label in spec.dynamic_axes.get(name, {}).values()}
    return sorted(keys - {"batch", "seq"})


def default_shapes(spec: ModelSpec, kwargs: Mapping[str, Any], export_seq: int | None) -> list[dict[str, int]]:
    """Batch 1 and 3 x the spec's critical lengths, plus lengths unlike the export length
    (other sequence axes, such as a memory's, get sizes unlike the sequence's)."""
    lengths = set(spec.lengths(kwargs))
    if export_seq is not None:
        lengths |= {export_seq + 5, max(1, export_seq // 2 - 1)}
    lengths.discard(export_seq)
    shapes = []
    for i, length in enumerate(sorted(lengths)):
        shape = {"batch": 3 if i % 2 else 1, "seq": length}
        for key in _extra_axes(spec):
            shape[key] = (length % 7) + 2 + 8 * (i % 2)
        shapes.append(shape)
    return shapes


def _override(base: Tolerance, value: Tolerance | tuple | Mapping[str, float] | None) -> Tolerance:
    if value is None:
        return base
    if isinstance(value, Tolerance):
        return value
    if isinstance(value, tuple):  # (atol, rtol): element-wise limits on top of the scale-aware rule
        atol, rtol = value
        return replace(base, atol=base.atol if atol is None else atol, rtol=base.rtol if rtol is None else rtol)
    unknown = set(value) - set(_TOLERANCE_FIELDS)
    if unknown:
        raise ValidationError(f"unknown tolerance keys {sorted(unknown)}", f"valid keys are {', '.join(_TOLERANCE_FIELDS)}.")
    bad = {k: v for k, v in value.items() if not isinstance(v, (int, float)) or v < 0 or v != v}
    if bad:
        raise ValidationError(f"tolerances must be numbers >= 0, got {bad}")
    return replace(base, **{k: float(v) for k, v in value.items()})


def _resolve_tolerances(spec: ModelSpec, precision: str, override: Tolerances | None) -> dict[str, tuple[Tolerance, Tolerance]]:
    """output -> (the rule at unit input scale, the rule at large input scales)."""
    unit, large = spec.tolerances[precision], spec.large_input_tolerances[precision]
    if override is None:
        return {name: (unit, large) for name in spec.outputs}
    numbers = isinstance(override, Mapping) and all(isinstance(v, (int, float)) for v in override.values())
    if isinstance(override, (Tolerance, tuple)) or numbers:  # one rule for every output
        override = {"": override}
    unknown = set(override) - {"", *spec.outputs}
    if unknown:
        raise ValidationError(f"tolerances name unknown outputs {sorted(unknown)}", f"outputs are {list(spec.outputs)}.")
    table = {}
    for name in spec.outputs:
        value = override.get(name, override.get(""))
        table[name] = (_override(unit, value), _override(large, value))
    return table


def _inputs(spec: ModelSpec, base: Mapping[str, Sequence[int]], shape: Shape, seed: int,
            dtype: np.dtype) -> dict[str, np.ndarray]:
    """Standard normal inputs times the shape's ``scale`` (default 1), in the graph's dtype:
    each input's example shape ``base[name]`` with its dynamic axes sized by the grid shape.
    Padding masks (int64): the first sample whole, the others right-padded to a random number
    of real tokens (at least 1)."""
    rng = np.random.default_rng(seed)
    scale = np.float32(shape.get("scale", 1.0))
    feed = {}
    for name in spec.inputs:
        dims = list(base[name])
        for axis, label in spec.dynamic_axes.get(name, {}).items():
            key = _case_key(label)
            dims[int(axis)] = shape.get(key, shape.get("mem", 8) if key == "mem" else shape["seq"])
        if name in MASK_INPUTS.values():
            real = rng.integers(1, dims[1] + 1, size=dims[0])
            real[0] = dims[1]
            feed[name] = (np.arange(dims[1])[None] < real[:, None]).astype(np.int64)
        else:
            feed[name] = (rng.standard_normal(dims, dtype=np.float32) * scale).astype(dtype)
    return feed


def _tolerance(tol: Mapping[str, tuple[Tolerance, Tolerance]], name: str, shape: Shape) -> Tolerance:
    """The rule of output ``name`` at this shape's input scale (above 1: the large-input rule)."""
    return tol[name][shape.get("scale", 1.0) > 1.0]


def _residual(spec: ModelSpec, feed: Mapping[str, np.ndarray], shape: Shape) -> np.ndarray | None:
    """The input a residual block adds back, for judging what the block computes. At large
    scales the residual swamps the branch in reduced precision: judged on the output."""
    if spec.residual is None or shape.get("scale", 1.0) > 1.0:
        return None
    return np.asarray(feed[spec.residual], dtype=np.float32)


@torch.no_grad()
def _eager(module: nn.Module, spec: ModelSpec, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    args = [torch.from_numpy(np.asarray(feed[n], dtype=np.float32 if feed[n].dtype.kind == "f" else None))
            for n in spec.inputs]
    out = module(**dict(zip(spec.inputs, args, strict=True))) if spec.masked else module(*args)
    out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    return {name: t.float().numpy() for name, t in zip(spec.outputs, out, strict=True)}


def _grid_profile(spec: ModelSpec, shapes: Sequence[Shape], base: Mapping[str, Sequence[int]]):
    """One TensorRT profile spanning every shape of the validation grid."""
    from hvlm_export.exporters.engine_build import Profile

    profile = {}
    for name in spec.inputs:
        lo, hi = list(base[name]), list(base[name])
        for axis, label in spec.dynamic_axes.get(name, {}).items():
            key = _case_key(label)
            values = [s.get(key, s.get("mem", 8) if key == "mem" else s["seq"]) for s in shapes]
            lo[int(axis)], hi[int(axis)] = min(values), max(values)
        profile[name] = (tuple(lo), tuple(hi), tuple(hi))
    return Profile(profile)


def _engine_for(artifact: Path, profile, workdir: Path) -> Path:
    """Build a TensorRT engine for an .onnx artefact into ``workdir`` (three-way validation;
    ``profile`` None: the builder's default profiles)."""
    from hvlm_export.exporters.engine_build import build_engine

    return build_engine(artifact, workdir / (artifact.stem + ".engine"), profiles=[profile] if profile else None)


def _open_backends(artifact: Path, backends: Sequence[str], providers, report: Report,
                   profile=None, workdir: Path | None = None) -> dict[str, Any]:
    from hvlm_export import runtime

    sessions = {}
    is_engine = artifact.suffix in runtime.ENGINE_SUFFIXES
    for backend in backends:
        if backend not in BACKENDS:
            raise ValidationError(f"unknown backend {backend!r}", f"valid choices are {', '.join(BACKENDS)}.")
        if backend == "onnxruntime" and is_engine:
            report.skipped[backend] = "the artefact is a TensorRT engine; validate the .onnx for ONNX Runtime"
        elif backend == "tensorrt" and not is_engine:
            from hvlm_export.plugins.trt import tensorrt_available

            reason = tensorrt_available()
            if reason is not None:
                report.skipped[backend] = reason
            else:
                try:
                    sessions[backend] = runtime.load(_engine_for(artifact, profile, workdir))
                except HvlmExportError as err:
                    report.skipped[backend] = f"engine build failed: {err.message}"
        else:
            try:
                sessions[backend] = runtime.load(artifact, providers=providers)
            except ArtifactError as err:  # e.g. ONNX Runtime CPU has no bfloat16 MatMul kernel
                report.skipped[backend] = f"cannot load: {err.message}" + (f" ({err.note})" if err.note else "")
    return sessions


def validate(
    model_or_path: nn.Module | str | os.PathLike,
    artifact: str | os.PathLike | None = None,
    *,
    shapes: Iterable[Shape] | None = None,
    tolerances: Tolerances | None = None,
    backends: Sequence[str] | None = None,
    seed: int = 0,
    providers: list[str] | None = None,
    input_scales: Sequence[float] = INPUT_SCALES,
    source: str | os.PathLike | None = None,
) -> Report:
    """Run eager and each backend on the same inputs over a shape grid; return the Report.

    Args:
        model_or_path: the exported file (the eager reference is rebuilt from it), or the
            eager module itself (then ``artifact`` is the file).
        artifact: the .onnx / engine file when ``model_or_path`` is a module.
        shapes: dicts {"batch": B, "seq": L[, "mem": M][, "scale": s]}; default
            :func:`default_shapes`. A shape without a scale runs at each of ``input_scales``.
        tolerances: default the registry's scale-aware rules for the artefact's precision
            (``Tolerance``, docs/EXPORT.md). Override with a Tolerance (replaces the rule),
            a dict of its fields such as ``{"nrmse": 1e-3}`` (replaces those limits), or an
            (atol, rtol) tuple (adds an element-wise limit; None keeps the rule's value);
            each either for every output or in a dict keyed by output name.
        backends: subset of ("onnxruntime", "tensorrt"); default both (unavailable ones are
            listed in ``report.skipped`` with the reason).
        seed: input seed (each shape gets seed + its index).
        providers: ONNX Runtime providers.
        source: the export a processed file was made from (polygraphy, onnx-graphsurgeon and
            onnxsim drop the metadata): its metadata and weights rebuild the reference, the
            processed file is what runs. Its inputs must match the source's.
        input_scales: input magnitudes of the grid (default 1 and 30: unit inputs, and large
            ones that overflow a reduced-precision graph that has no headroom). Scales above
            1 use the spec's large-input rule.

    Returns:
        The Report (truthy iff every case passed).
    """
    if isinstance(model_or_path, nn.Module):
        if artifact is None:
            raise ValidationError("validate(module, artifact) needs the artefact to compare against")
        path = Path(artifact)
        reference = load_reference(source or path, module=model_or_path)
    else:
        path = Path(artifact if artifact is not None else model_or_path)
        reference = load_reference(source or path)
    if source is not None:
        check_same_interface(path, Path(source))
    spec, meta = reference.spec, reference.meta
    if shapes is None:
        if meta.get("dynamic") is False:
            shapes = [_export_shape(spec, meta["input_shapes"])]
        else:
            first = meta["input_shapes"][spec.inputs[0]]
            shapes = default_shapes(spec, reference.kwargs, first[1] if len(first) > 1 else None)
    precision = meta["precision"]
    tol = _resolve_tolerances(spec, precision, tolerances)
    report = Report(spec.name, str(path), precision)
    shapes = _with_scales(shapes, input_scales)
    streaming = meta.get("mode") == "step"
    with tempfile.TemporaryDirectory(prefix="hvlm-validate-") as workdir:
        profile = None if streaming else _grid_profile(spec, shapes, meta["input_shapes"])  # step: build's defaults
        sessions = _open_backends(path, list(backends or BACKENDS), providers, report, profile, Path(workdir))
        _require_a_backend(report, sessions)
        if streaming:
            run_stream_cases(report, sessions, reference, shapes, tol, seed, _inputs, _eager, _tolerance, _residual)
        else:
            _run_cases(report, sessions, reference, shapes, tol, seed)
    return report


def _export_shape(spec: ModelSpec, base: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """The grid shape of the export's own input shapes (a static graph runs only there)."""
    shape = {}
    for name in spec.inputs:
        for axis, label in default_dynamic_axes((name,), ()).get(name, {}).items():
            if axis < len(base[name]):
                shape.setdefault(_case_key(label), base[name][axis])
    return shape


def _with_scales(shapes: Iterable[Shape], scales: Sequence[float]) -> list[dict]:
    scales = list(scales)
    if not scales or any(not isinstance(v, (int, float)) or not v > 0 or v == float("inf") for v in scales):
        raise ValidationError(f"input scales must be finite numbers > 0, got {scales}")
    out = []
    for shape in shapes:
        shape = dict(shape)
        out += [shape] if "scale" in shape else [{**shape, "scale": float(v)} for v in scales]
    return out


def _require_a_backend(report: Report, sessions: dict[str, Any]) -> None:
    if sessions:
        return
    if report.precision == "bf16":
        hint = ("ONNX Runtime's CPU provider has no bfloat16 kernels for MatMul/Conv; validate bf16 with the CUDA "
                "provider or a TensorRT engine (docs/EXPORT.md lists what runs where).")
    else:
        hint = "each backend's reason is given above; `hvlm-export lint FILE` checks the graph."
    raise ValidationError(f"no backend could run {Path(report.artifact).name!r}: "
                          + "; ".join(f"{b}: {r}" for b, r in report.skipped.items()), hint)


def _run_cases(report: Report, sessions: dict[str, Any], reference, shapes, tol, seed: int) -> None:
    spec = reference.spec
    dtype = next(iter(sessions.values())).inputs[0].dtype
    for i, shape in enumerate(shapes):
        feed = _inputs(spec, reference.meta["input_shapes"], shape, seed + i, dtype)
        expected = _eager(reference.module, spec, feed)
        for backend, session in sessions.items():
            case = Case(backend, {n: tuple(a.shape) for n, a in feed.items()}, scale=shape["scale"])
            try:
                actual = session.run(feed)
            except HvlmExportError as err:
                case.error = str(err)
            except Exception as err:  # a runtime failing to run is a failed case, never a crash
                case.error = f"{type(err).__name__}: {str(err)[:300]}"
            else:
                for name in spec.outputs:
                    case.outputs[name] = compare(np.asarray(actual[name]).astype(np.float32), expected[name],
                                                 _tolerance(tol, name, shape), _residual(spec, feed, shape))
            report.cases.append(case)
            log.info("%s %s: %s", backend, case.shape, "PASSED" if case.passed else "FAILED")

