"""TensorRT plugins for hvlm custom nodes; imported only when TensorRT is present.

``register_plugins(trt)`` registers ``hvlm::SelectiveScan`` version 1 through the best route
this TensorRT offers (feature detection, not version strings):

* ``tensorrt.plugin`` (QDP, TensorRT >= 10.6): ``register`` + ``impl`` (JIT, the kernel runs
  through torch + Triton in the process), and ``aot_impl`` (TensorRT >= 10.9, Triton
  available): the Triton kernel compiled to PTX and embedded in the engine, no Python at run
  time.
* otherwise ``IPluginV3`` Python classes (TensorRT 10.0 - 10.5).
"""

from __future__ import annotations

import importlib.util
import logging
from types import ModuleType

__all__ = ["register_plugins"]

log = logging.getLogger(__name__)
_REGISTERED: list[str] | None = None


def register_plugins(trt: ModuleType) -> list[str]:
    """Register the SelectiveScan plugin once; return the routes used ('qdp', 'aot', 'v3')."""
    global _REGISTERED
    if _REGISTERED is not None:
        return _REGISTERED
    if importlib.util.find_spec("tensorrt.plugin") is not None:
        from hvlm_export.exporters.plugins import selective_scan_qdp

        _REGISTERED = selective_scan_qdp.register()
    else:
        from hvlm_export.exporters.plugins import selective_scan_v3

        selective_scan_v3.register(trt)
        _REGISTERED = ["v3"]
    log.info("registered hvlm::SelectiveScan plugin via %s", _REGISTERED)
    return _REGISTERED
