"""ONNX Runtime session (numpy in, numpy out; no torch)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hvlm_export.artifacts import decode_metadata, props_from_doc_string, strip_prefix
from hvlm_export.errors import ArtifactError
from hvlm_export.runtime.session import Session, TensorInfo

__all__ = ["OnnxSession", "default_providers"]

_ORT_TYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(bool)": np.dtype(np.bool_),
}


def _load_hint(message: str) -> str:
    """What to do about an ONNX Runtime load failure, by its cause."""
    if "SelectiveScan" in message and "not a registered function" in message:
        return ("the SelectiveScan function body is missing (onnx.version_converter and some tools drop "
                "model-local functions); `hvlm-export lint` shows it. Re-export with --opset N instead.")
    if "bfloat16" in message or "BFloat16" in message or "tensor(bfloat16)" in message:
        return ("ONNX Runtime's CPU provider has no bfloat16 kernels for MatMul/Conv; run bf16 with the CUDA "
                "provider or a TensorRT engine.")
    return "the file may be truncated or corrupt, or use an op/dtype this onnxruntime lacks; re-export it."


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _dtype(ort_type: str) -> np.dtype:
    if ort_type == "tensor(bfloat16)":
        import ml_dtypes  # shipped with onnx

        return np.dtype(ml_dtypes.bfloat16)
    return _ORT_TYPES[ort_type]


class OnnxSession(Session):
    """An ``onnxruntime.InferenceSession`` behind the Session contract.

    Args:
        path: the .onnx file (its external data, if any, beside it).
        providers: execution providers in priority order (default CUDA if present, CPU).
        scan_kernel: run ``hvlm::SelectiveScan`` with the onnxruntime-extensions kernel of
            :mod:`hvlm_export.runtime.ort_scan_kernel` instead of its function body (float32).
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, scan_kernel: bool = False) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        providers = providers or default_providers()
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown:
            raise ArtifactError(
                f"execution provider(s) {unknown} are not available in this onnxruntime",
                f"available providers are {ort.get_available_providers()}.",
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if scan_kernel:
            from hvlm_export.runtime.ort_scan_kernel import register_selective_scan_kernel

            options.register_custom_ops_library(register_selective_scan_kernel())
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:  # ORT raises InvalidGraph, Fail, NoSuchFile, ...: all mean "unusable"
            raise ArtifactError(f"ONNX Runtime cannot load {self.path.name!r}: {type(err).__name__}: {str(err)[:500]}",
                                _load_hint(str(err))) from err
        self.providers = self._session.get_providers()
        meta = self._session.get_modelmeta()
        raw = strip_prefix(meta.custom_metadata_map) or strip_prefix(props_from_doc_string(meta.graph_description))
        self.metadata = decode_metadata(raw)
        self.inputs = tuple(TensorInfo(i.name, _dtype(i.type), tuple(i.shape)) for i in self._session.get_inputs())
        self.outputs = tuple(TensorInfo(o.name, _dtype(o.type), tuple(o.shape)) for o in self._session.get_outputs())

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self.output_names, dict(feed))
        return dict(zip(self.output_names, values, strict=True))
