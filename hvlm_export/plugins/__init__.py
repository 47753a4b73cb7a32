"""TensorRT plugins for hvlm custom nodes, shared by the engine builder and the engine runtime.

``register_plugins(trt)`` registers ``hvlm::SelectiveScan`` through TensorRT's Python plugin
API (``tensorrt.plugin``; TensorRT 10.8+ and 11.x): ``register`` + ``impl`` (the kernel runs
through torch + Triton in the process) and, where Triton is installed, ``aot_impl`` (the
Triton kernel compiled to PTX and embedded in the engine: no Python at run time). On a
TensorRT without ``tensorrt.plugin`` nothing is registered and the ONNX parser imports the
node's function body (standard ops) instead. Nothing here imports tensorrt at import time.
"""

from __future__ import annotations

import importlib.util
import logging
from types import ModuleType

__all__ = ["register_plugins"]

log = logging.getLogger(__name__)
_REGISTERED: list[str] | None = None


def register_plugins(trt: ModuleType) -> list[str]:
    """Register the SelectiveScan plugin once; return the routes used ('qdp', 'aot'), or []
    when this TensorRT has no Python plugin API (the function body is used then)."""
    global _REGISTERED
    if _REGISTERED is not None:
        return _REGISTERED
    if importlib.util.find_spec("tensorrt.plugin") is None:
        log.warning("TensorRT %s has no tensorrt.plugin (needs 10.8+): hvlm::SelectiveScan runs as its ONNX "
                    "function body", getattr(trt, "__version__", "?"))
        _REGISTERED = []
        return _REGISTERED
    from hvlm_export.plugins import selective_scan_qdp

    _REGISTERED = selective_scan_qdp.register()
    log.info("registered hvlm::SelectiveScan plugin via %s", _REGISTERED)
    return _REGISTERED
