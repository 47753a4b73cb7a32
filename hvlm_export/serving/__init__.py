"""Serving on Triton Inference Server (DESIGN.md section 9): model repositories
(:func:`write_repository`) and a local server (:func:`hvlm_export.serving.server.serve`).

Imported lazily, so that the CLI can register its serving commands without loading onnx.
"""

from __future__ import annotations

__all__ = ["BACKENDS", "write_repository"]


def __getattr__(name: str):
    if name in __all__:
        from hvlm_export.serving import repository

        return getattr(repository, name)
    raise AttributeError(f"module 'hvlm_export.serving' has no attribute {name!r}")
