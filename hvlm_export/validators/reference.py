"""Rebuild the eager float32 reference of an exported artefact from the artefact alone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hvlm_export.artifacts import read_metadata, read_weights_bytes
from hvlm_export.errors import ArtifactError, ValidationError
from hvlm_export.registry import (
    MASK_INPUTS,
    USER_MODULE,
    ModelSpec,
    get,
    spec_for_config,
    spec_for_module,
    spec_for_user_module,
)
from hvlm_export.user_models import build_module, input_names

__all__ = ["Reference", "load_reference", "check_same_interface"]

#: metadata an artefact needs for its reference to be rebuilt
_REQUIRED = ("source", "precision", "input_shapes", "weights", "weights_sha256")


@dataclass
class Reference:
    module: nn.Module
    spec: ModelSpec
    kwargs: dict[str, Any]
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        """The width of x (of the first input of a module without an x)."""
        shapes = self.meta["input_shapes"]
        return int(shapes.get("x", shapes[self.spec.inputs[0]])[-1])


def _check_metadata(path: Path, meta: dict[str, Any]) -> None:
    if "source" not in meta:
        raise ValidationError(
            f"{path.name!r} has no hvlm-export metadata (not exported by hvlm-export, or processed by a tool that "
            "drops it: polygraphy, onnx-graphsurgeon and onnxsim do)",
            "validate it against the export it was made from: --source ORIGINAL.onnx (Python: source=...).",
        )
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValidationError(f"{path.name!r} lacks the metadata {missing} (written by an older hvlm-export?)",
                              "re-export the model with this version.")


def _load_state(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The exported weights: safetensors bytes checked against the metadata's hash first, so
    nothing of a changed or truncated file is used (and nothing is ever unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    weights = Path(meta["weights_dir"]) / meta["weights"]
    if not weights.is_file():
        raise ArtifactError(f"weights file {weights.name!r} beside {path.name!r} is missing", "re-export the model.")
    data = read_weights_bytes(weights, meta)
    try:
        return load(data)
    except SafetensorError as err:
        raise ArtifactError(f"weights file {weights.name!r} is not readable safetensors: {err}") from err


def _rebuild(path: Path, meta: dict[str, Any], spec: ModelSpec | None) -> nn.Module:
    source = meta["source"]
    kwargs = dict(source.get("kwargs", {}))
    if source["kind"] == "callable":
        module = build_module(source["target"], kwargs, error=ValidationError)
    elif source["kind"] == "module":
        raise ValidationError(
            f"{path.name!r} was exported from an instance of {source.get('class', 'a module')}, which the file "
            "cannot rebuild", "pass the module: validate(module, file), or export through an import path "
            "(hvlm-export export package.module:callable) so validate can rebuild it.")
    else:
        module = spec.factory(**kwargs)
    try:
        module.load_state_dict(_load_state(path, meta), strict=True)
    except RuntimeError as err:
        raise ValidationError(f"the weights beside {path.name!r} do not fit the rebuilt model: {str(err)[:400]}",
                              "the code the file was exported from has changed; re-export the model.") from err
    return module


def _graph_inputs(path: Path) -> dict[str, int]:
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:  # protobuf errors and friends
        raise ArtifactError(f"{str(path)!r} is not a readable ONNX file: {err}") from err
    inits = {i.name for i in graph.initializer}
    return {v.name: len(v.type.tensor_type.shape.dim) for v in graph.input if v.name not in inits}


def check_same_interface(path: Path, source: Path) -> None:
    """A processed file must take the inputs (names, ranks) of the export it was made from."""
    if path.suffix in (".engine", ".plan", ".trt"):
        return  # an engine carries its own metadata (sidecar)
    got, want = _graph_inputs(path), _graph_inputs(source)
    if got != want:
        raise ValidationError(f"{path.name!r} takes inputs {got} (name: rank), its --source {source.name!r} takes "
                              f"{want}", "--source must be the export this file was made from.")


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
        module = _rebuild(path, meta, spec)
    if spec is None:
        spec = spec_for_module(module)
        if spec.summary == USER_MODULE:
            inputs = input_names(module, list(meta["input_shapes"]))  # the forward's order
            spec = spec_for_user_module(module, inputs, tuple(meta.get("outputs", ("y",))), meta["dynamic_axes"])
    if spec.summary != USER_MODULE and MASK_INPUTS["x"] in meta["input_shapes"]:
        spec = spec.with_masks()  # exported with padding masks
    return Reference(module.float().eval(), spec, kwargs, meta)
