"""Rebuild the eager float32 reference of an exported artefact from the artefact alone."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hvlm_export.errors import ArtifactError, ValidationError
from hvlm_export.registry import ModelSpec, get, spec_for_config

__all__ = ["Reference", "load_reference", "read_artifact_metadata"]


@dataclass
class Reference:
    module: nn.Module
    spec: ModelSpec
    kwargs: dict[str, Any]
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.meta["input_shapes"]["x"][-1])


def read_artifact_metadata(path: Path) -> dict[str, Any]:
    """hvlm_export metadata of an .onnx file, or of the .json beside an engine."""
    from hvlm_export.runtime import ENGINE_SUFFIXES

    if path.suffix in ENGINE_SUFFIXES:
        meta_path = path.with_suffix(path.suffix + ".json")
        if not meta_path.is_file():
            raise ArtifactError(f"engine metadata {meta_path.name!r} is missing", "rebuild with `hvlm-export build`.")
        engine_meta = json.loads(meta_path.read_text())
        raw = engine_meta["onnx_metadata"]
        weights_dir = Path(engine_meta.get("onnx_dir", path.parent))
    else:
        from hvlm_export.exporters.onnx import read_metadata

        raw = read_metadata(path)
        weights_dir = path.parent
    if "source" not in raw:
        raise ValidationError(
            f"{path.name!r} was not exported by hvlm-export (no hvlm_export.* metadata)",
            "pass the eager module: validate(module, artifact).",
        )
    meta = dict(raw)
    meta["source"] = json.loads(raw["source"])
    meta["input_shapes"] = json.loads(raw["inputs"])
    meta["dir"] = str(weights_dir if (weights_dir / raw.get("weights", "")).is_file() else path.parent)
    return meta


def load_reference(path: str | os.PathLike, module: nn.Module | None = None) -> Reference:
    """The float32 eager module for ``path`` (rebuilt from metadata + weights unless given)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{str(path)!r} does not exist")
    meta = read_artifact_metadata(path)
    source = meta["source"]
    kwargs = dict(source.get("kwargs", {}))
    if source["kind"] == "registry":
        spec = get(source["name"])
    elif source["kind"] == "config":
        spec = spec_for_config(source["config"])
    else:
        from hvlm_export.exporters.onnx import spec_for_module

        spec = None
    if module is None:
        weights = Path(meta["dir"]) / meta["weights"]
        if not weights.is_file():
            raise ArtifactError(f"weights file {weights.name!r} beside {path.name!r} is missing", "re-export the model.")
        if source["kind"] == "module":
            # a pickled module written by export_onnx itself: trusted like the .onnx next to it
            module = torch.load(weights, map_location="cpu", weights_only=False)
        else:
            module = spec.factory(**kwargs)
            module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    if spec is None:
        spec = spec_for_module(module)
    return Reference(module.float().eval(), spec, kwargs, meta)
