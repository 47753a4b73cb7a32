"""ONNX -> TensorRT engine. TensorRT is imported lazily, only by the functions that need it."""

from __future__ import annotations

import importlib
from types import ModuleType

from hvlm_export.errors import TensorRTUnavailableError

__all__ = ["tensorrt_available", "import_tensorrt"]

INSTALL_HINT = "install TensorRT 10.x or 11.x for your CUDA (`pip install tensorrt`) on a machine with an NVIDIA GPU."


def tensorrt_available() -> str | None:
    """None if ``import tensorrt`` works, else the reason it does not."""
    try:
        import_tensorrt()
    except TensorRTUnavailableError as err:
        return err.message
    return None


def import_tensorrt() -> ModuleType:
    """``import tensorrt``, or TensorRTUnavailableError saying how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as err:
        raise TensorRTUnavailableError(f"TensorRT is not installed ({err})", INSTALL_HINT) from err
