"""The one place that imports TensorRT, and the one TensorRT dtype map.

Imported lazily by the engine builder, the engine runtime and the plugins; ``import
hvlm_export`` never imports tensorrt. Supported: TensorRT 10.8 and newer 10.x (the Python
plugin API ``tensorrt.plugin`` with ahead-of-time kernels) and 11.x.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

from hvlm_export.errors import TensorRTUnavailableError

__all__ = ["INSTALL_HINT", "import_tensorrt", "tensorrt_available", "dtype_name", "numpy_dtype"]

INSTALL_HINT = "install TensorRT 10.8+ or 11.x for your CUDA (`pip install tensorrt`) on a machine with an NVIDIA GPU."

#: TensorRT DataType member name -> our dtype name (numpy's spelling; bfloat16 via ml_dtypes)
_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
          "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


def import_tensorrt() -> ModuleType:
    """``import tensorrt``, or TensorRTUnavailableError saying how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as err:
        raise TensorRTUnavailableError(f"TensorRT is not installed ({err})", INSTALL_HINT) from err


def tensorrt_available() -> str | None:
    """None if ``import tensorrt`` works, else the reason it does not."""
    try:
        import_tensorrt()
    except TensorRTUnavailableError as err:
        return err.message
    return None


def dtype_name(trt: Any, dtype: Any) -> str:
    """A ``trt.DataType`` as 'float32', 'float16', 'bfloat16', 'int64', ... (str() if unknown)."""
    for member, name in _NAMES.items():
        if getattr(trt.DataType, member, None) == dtype:
            return name
    return str(dtype)


def numpy_dtype(trt: Any, dtype: Any) -> np.dtype:
    """The numpy dtype of a ``trt.DataType`` (bfloat16 through ml_dtypes, shipped with onnx)."""
    name = dtype_name(trt, dtype)
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
