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
from typing import Any

import numpy as np
import torch
from torch import nn

from hvlm_export.errors import ArtifactError, HvlmExportError, ValidationError
from hvlm_export.registry import ModelSpec, Tolerance
from hvlm_export.validators.compare import compare
from hvlm_export.validators.reference import load_reference
from hvlm_export.validators.report import Case, Report
from hvlm_export.validators.streaming import run_stream_cases

__all__ = ["validate", "default_shapes", "BACKENDS"]

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt")
Shape = Mapping[str, int]  # {"batch": B, "seq": L[, "mem": M]}
Tolerances = Tolerance | tuple[float, float] | Mapping[str, Tolerance | tuple[float, float]]


def default_shapes(spec: ModelSpec, kwargs: Mapping[str, Any], export_seq: int | None) -> list[dict[str, int]]:
    """Batch 1 and 3 x the spec's critical lengths, plus lengths unlike the export length."""
    lengths = set(spec.lengths(kwargs))
    if export_seq is not None:
        lengths |= {export_seq + 5, max(1, export_seq // 2 - 1)}
    lengths.discard(export_seq)
    shapes = []
    for i, length in enumerate(sorted(lengths)):
        batch = 3 if i % 2 else 1
        shape = {"batch": batch, "seq": length}
        if "memory" in spec.inputs:
            shape["mem"] = (length % 7) + 2 + 8 * (i % 2)
        shapes.append(shape)
    return shapes


def _resolve_tolerances(spec: ModelSpec, precision: str, override: Tolerances | None) -> dict[str, Tolerance]:
    base = spec.tolerances[precision]
    table = {name: base for name in spec.outputs}
    if override is None:
        return table
    if isinstance(override, (Tolerance, tuple)):
        override = {"": override}
    default = override.get("")
    for name in spec.outputs:
        value = override.get(name, default)
        if isinstance(value, Tolerance):
            table[name] = value
        elif value is not None:  # (atol, rtol); a None keeps the registry's value
            atol, rtol = value
            table[name] = Tolerance(base.atol if atol is None else atol, base.rtol if rtol is None else rtol)
    unknown = set(override) - {"", *spec.outputs}
    if unknown:
        raise ValidationError(f"tolerances name unknown outputs {sorted(unknown)}", f"outputs are {list(spec.outputs)}.")
    return table


def _inputs(spec: ModelSpec, dim: int, shape: Shape, seed: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {"x": rng.standard_normal((shape["batch"], shape["seq"], dim), dtype=np.float32)}
    if "memory" in spec.inputs:
        feed["memory"] = rng.standard_normal((shape["batch"], shape.get("mem", 8), dim), dtype=np.float32)
    return {k: v.astype(dtype) for k, v in feed.items()}


@torch.no_grad()
def _eager(module: nn.Module, spec: ModelSpec, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    args = [torch.from_numpy(np.asarray(feed[n], dtype=np.float32)) for n in spec.inputs]
    return {spec.outputs[0]: module(*args).numpy()}


def _grid_profile(spec: ModelSpec, shapes: Sequence[Shape], dim: int):
    """One TensorRT profile spanning every shape of the validation grid."""
    from hvlm_export.exporters.engine_build import Profile

    def span(key: str, default: int = 1) -> tuple[int, int]:
        values = [s.get(key, default) for s in shapes]
        return min(values), max(values)

    (b0, b1), (l0, l1), (m0, m1) = span("batch"), span("seq"), span("mem", 8)
    profile = {"x": ((b0, l0, dim), (b1, l1, dim), (b1, l1, dim))}
    if "memory" in spec.inputs:
        profile["memory"] = ((b0, m0, dim), (b1, m1, dim), (b1, m1, dim))
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
                report.skipped[backend] = f"cannot load: {err.message}"
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
) -> Report:
    """Run eager and each backend on the same inputs over a shape grid; return the Report.

    Args:
        model_or_path: the exported file (the eager reference is rebuilt from it), or the
            eager module itself (then ``artifact`` is the file).
        artifact: the .onnx / engine file when ``model_or_path`` is a module.
        shapes: dicts {"batch": B, "seq": L[, "mem": M]}; default :func:`default_shapes`.
        tolerances: Tolerance (all outputs), {output: Tolerance}, or (atol, rtol) tuples
            where None keeps the registry's value; default the registry's for the
            artefact's precision.
        backends: subset of ("onnxruntime", "tensorrt"); default both (unavailable ones are
            listed in ``report.skipped`` with the reason).
        seed: input seed (each shape gets seed + its index).
        providers: ONNX Runtime providers.

    Returns:
        The Report (truthy iff every case passed).
    """
    if isinstance(model_or_path, nn.Module):
        if artifact is None:
            raise ValidationError("validate(module, artifact) needs the artefact to compare against")
        path = Path(artifact)
        reference = load_reference(path, module=model_or_path)
    else:
        path = Path(artifact if artifact is not None else model_or_path)
        reference = load_reference(path)
    spec, meta = reference.spec, reference.meta
    if shapes is None:
        if meta.get("dynamic") is False:
            dims = meta["input_shapes"]
            shapes = [{"batch": dims["x"][0], "seq": dims["x"][1], **({"mem": dims["memory"][1]} if "memory" in dims else {})}]
        else:
            shapes = default_shapes(spec, reference.kwargs, meta["input_shapes"]["x"][1])
    precision = meta["precision"]
    tol = _resolve_tolerances(spec, precision, tolerances)
    report = Report(spec.name, str(path), precision)
    shapes = [dict(s) for s in shapes]
    streaming = meta.get("mode") == "step"
    with tempfile.TemporaryDirectory(prefix="hvlm-validate-") as workdir:
        profile = None if streaming else _grid_profile(spec, shapes, reference.dim)  # step graphs: build's defaults
        sessions = _open_backends(path, list(backends or BACKENDS), providers, report, profile, Path(workdir))
        _require_a_backend(report, sessions)
        if streaming:
            run_stream_cases(report, sessions, reference, shapes, tol, seed, _inputs, _eager)
        else:
            _run_cases(report, sessions, reference, shapes, tol, seed)
    return report


def _require_a_backend(report: Report, sessions: dict[str, Any]) -> None:
    if not sessions:
        raise ValidationError(
            f"no backend could run {Path(report.artifact).name!r}: "
            + "; ".join(f"{b}: {r}" for b, r in report.skipped.items()),
            "ONNX Runtime's CPU provider has no bfloat16 kernels for MatMul/Conv; validate bf16 with the CUDA "
            "provider or a TensorRT engine (docs/EXPORT.md lists what runs where).",
        )


def _run_cases(report: Report, sessions: dict[str, Any], reference, shapes, tol, seed: int) -> None:
    spec = reference.spec
    dtype = next(iter(sessions.values())).inputs[0].dtype
    for i, shape in enumerate(shapes):
        feed = _inputs(spec, reference.dim, shape, seed + i, dtype)
        expected = _eager(reference.module, spec, feed)
        for backend, session in sessions.items():
            case = Case(backend, {n: tuple(a.shape) for n, a in feed.items()})
            try:
                actual = session.run(feed)
            except HvlmExportError as err:
                case.error = str(err)
            except Exception as err:  # a runtime failing to run is a failed case, never a crash
                case.error = f"{type(err).__name__}: {str(err)[:300]}"
            else:
                for name in spec.outputs:
                    case.outputs[name] = compare(np.asarray(actual[name]).astype(np.float32), expected[name], tol[name])
            report.cases.append(case)
            log.info("%s %s: %s", backend, case.shape, "PASSED" if case.passed else "FAILED")

