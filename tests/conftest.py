"""Shared fixtures: small exported models, cached per session."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from hvlm_export.registry import REGISTRY

CONFIG_DIR = Path(__file__).parents[1] / "configs" / "attention"


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(name, precision="fp32", **kw)`` -> path of a small export, built once."""
    from hvlm_export.exporters.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("exports")
    cache: dict[tuple, Path] = {}

    def get(name: str, precision: str = "fp32", overrides: dict | None = None, **kwargs) -> Path:
        """``overrides``: constructor arguments on top of the registry's small size."""
        key = (name, precision, tuple(sorted((overrides or {}).items())), tuple(sorted(kwargs.items())))
        if key not in cache:
            model_kwargs = {**REGISTRY[name].small, **(overrides or {})} if name in REGISTRY else None
            model = name if name in REGISTRY else str(CONFIG_DIR / f"{name}.yaml")
            path = root / f"{name}-{precision}-{len(cache)}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[key] = export_onnx(model, path, precision=precision, model_kwargs=model_kwargs, **kwargs)
        return cache[key]

    return get
