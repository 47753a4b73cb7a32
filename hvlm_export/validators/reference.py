"""Rebuild the eager float32 reference of an exported artefact from the artefact alone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hvlm_export.artifacts import read_metadata
from hvlm_export.errors import ArtifactError, ValidationError
from hvlm_export.registry import ModelSpec, get, spec_for_config, spec_for_module

__all__ = ["Reference", "load_reference"]

#: metadata an artefact needs for its reference to be rebuilt
_REQUIRED = ("source", "precision", "input_shapes", "weights")


@dataclass
class Reference:
    module: nn.Module
    spec: ModelSpec
    kwargs: dict[str, Any]
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.meta["input_shapes"]["x"][-1])


def _check_metadata(path: Path, meta: dict[str, Any]) -> None:
    if "source" not in meta:
        raise ValidationError(
            f"{path.name!r} was not exported by hvlm-export (no hvlm_export.* metadata)",
            "pass the eager module: validate(module, artifact).",
        )
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValidationError(f"{path.name!r} lacks the metadata {missing} (written by an older hvlm-export?)",
                              "re-export the model with this version.")


def load_reference(path: str | os.PathLike, module: nn.Module | None = None) -> Reference:
    """The float32 eager module for ``path`` (rebuilt from metadata + weights unless given)."""
    path = Path(path)
    meta = read_metadata(path)
    _check_metadata(path, meta)
    source = meta["source"]
    kwargs = dict(source.get("kwargs", {}))
    spec = None
    if source["kind"] == "registry":
        spec = get(source["name"])
    elif source["kind"] == "config":
        spec = spec_for_config(source["config"])
    if module is None:
        weights = Path(meta["weights_dir"]) / meta["weights"]
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
