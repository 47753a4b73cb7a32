"""Run an exported artefact: ``load(path)`` -> a session with ``run(dict) -> dict``.

The ONNX path needs only onnxruntime and numpy: importing this package imports neither
torch nor tensorrt.
"""

from __future__ import annotations

import os
from pathlib import Path

from hvlm_export.artifacts import ENGINE_SUFFIXES
from hvlm_export.errors import ArtifactError
from hvlm_export.runtime.ort_session import OnnxSession
from hvlm_export.runtime.session import Session, TensorInfo
from hvlm_export.runtime.stream import Stream

__all__ = ["load", "Session", "TensorInfo", "OnnxSession", "Stream", "ENGINE_SUFFIXES"]


def load(path: str | os.PathLike, *, providers: list[str] | None = None, scan_kernel: bool = False) -> Session:
    """Open an .onnx file (ONNX Runtime) or a TensorRT engine file with the same interface.

    Args:
        path: the artefact.
        providers: ONNX Runtime execution providers in priority order (default: CUDA when
            available, then CPU).
        scan_kernel: ONNX only: run SelectiveScan nodes with the onnxruntime-extensions
            kernel (runtime/ort_scan_kernel.py) instead of their function body.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{str(path)!r} does not exist or is not a file")
    if path.suffix == ".onnx":
        return OnnxSession(path, providers=providers, scan_kernel=scan_kernel)
    if path.suffix in ENGINE_SUFFIXES:
        from hvlm_export.runtime.engine_session import EngineSession

        return EngineSession(path)
    raise ArtifactError(
        f"cannot tell how to run {path.name!r}",
        f"expected a .onnx file or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}).",
    )
