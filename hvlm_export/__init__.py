"""hvlm-export: efficient attention from PyTorch to ONNX / TensorRT, with parity proofs.

Public API (imported lazily, so ``import hvlm_export`` stays light and never imports
tensorrt)::

    hx.export_onnx(model, path, ...)      -> Path
    hx.validate(model_or_path, artifact)  -> Report
    hx.build_engine(onnx_path, engine)    -> Path
    hx.lint_tensorrt(onnx_path)           -> list[Finding]
    hx.runtime.load(path)                 -> Session
"""

from __future__ import annotations

import importlib
from typing import Any

from hvlm_export.errors import HvlmExportError

__version__ = "0.1.0"

_LAZY = {
    "export_onnx": "hvlm_export.exporters.onnx_export",
    "validate": "hvlm_export.validators.parity",
    "build_engine": "hvlm_export.exporters.engine_build",
    "lint_tensorrt": "hvlm_export.validators.trt_lint",
    "runtime": "hvlm_export.runtime",
    "registry": "hvlm_export.registry",
    "modules": "hvlm_export.modules",
}

__all__ = ["HvlmExportError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hvlm_export' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    return module if module.__name__.endswith(name) else getattr(module, name)
