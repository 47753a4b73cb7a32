"""Serving on Triton Inference Server (DESIGN.md section 9): model repositories."""

from hvlm_export.serving.repository import BACKENDS, write_repository

__all__ = ["BACKENDS", "write_repository"]
