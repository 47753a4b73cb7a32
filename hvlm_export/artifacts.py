"""The artifact format, defined once: ONNX metadata, the weights file, the engine sidecar.

An export writes ``model.onnx`` (metadata under the ``hvlm_export.`` prefix: what it was
exported from and how) and the weights beside it; ``build`` writes ``model.engine`` and
``model.engine.json`` (the engine sidecar: the ONNX file's metadata, profiles, TensorRT
version, plugins). :func:`read_metadata` reads either kind back into one decoded dict, so
validate, run and build never parse these files themselves.

Also here: the identity of the ``hvlm::SelectiveScan`` node, which the exporter writes, the
lint checks and the TensorRT plugin implements.

Imports neither torch nor tensorrt (the ONNX runtime path uses this module).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hvlm_export.errors import ArtifactError

__all__ = [
    "META_PREFIX",
    "METADATA_KEYS",
    "ENGINE_SUFFIXES",
    "SCAN_DOMAIN",
    "SCAN_OP",
    "SCAN_PLUGIN_VERSION",
    "SCAN_INPUTS",
    "SCAN_OUTPUTS",
    "MASK_INPUTS",
    "weights_path",
    "sha256_of",
    "read_weights_bytes",
    "check_writable",
    "engine_sidecar_path",
    "encode_metadata",
    "decode_metadata",
    "metadata_of",
    "metadata_doc_string",
    "props_from_doc_string",
    "strip_prefix",
    "read_onnx_metadata",
    "write_engine_sidecar",
    "read_engine_sidecar",
    "read_metadata",
    "write_atomic",
]

META_PREFIX = "hvlm_export."
#: every metadata key an export writes -> how its value is stored ("str" as is, "json" encoded)
METADATA_KEYS: Mapping[str, str] = {
    "version": "str",          # hvlm-export version that wrote the file
    "torch": "str",            # torch version used to export
    "source": "json",          # {"kind": "registry"|"config"|"callable"|"module", ...}: how to rebuild the eager model
    "mechanism": "str",        # registry name (or config / class name)
    "precision": "str",        # fp32 | fp16 | bf16
    "scan": "str",             # custom | inline
    "opset": "json",           # int
    "dynamic": "json",         # bool: batch/sequence axes dynamic
    "input_shapes": "json",    # {input: example shape}
    "dynamic_axes": "json",    # {tensor: {axis: name}}
    "weights": "str",          # weights file name (safetensors), beside the .onnx
    "weights_sha256": "str",   # its SHA-256: a changed or truncated weights file is refused
    "outputs": "json",         # [output names]
    "mode": "str",             # forward | step (a streaming step graph: x, past.* -> y, present.*)
    "state": "json",           # step graphs: [{name, shape ('batch'/'past' symbolic), dtype, fill}]
    "seed": "json",            # seed the weights were built with (null: a user's module)
}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

SCAN_DOMAIN = "hvlm"
SCAN_OP = "SelectiveScan"
#: version 2 added the eighth input, initial_state (B, D, N) float32 (zeros outside streaming)
SCAN_PLUGIN_VERSION = "2"
SCAN_INPUTS = ("u", "delta", "A", "B", "C", "D", "delta_bias", "initial_state")
SCAN_OUTPUTS = ("y", "last_state")
#: graph inputs of an export with padding masks (``--with-mask``): each sequence input -> its
#: (batch, length) int64 mask, 1 = real token (DESIGN.md section 9)
MASK_INPUTS = MappingProxyType({"x": "attention_mask", "memory": "memory_mask"})


def weights_path(onnx_path: str | os.PathLike) -> Path:
    """The weights file written beside an exported ``.onnx`` (safetensors: never unpickled)."""
    path = Path(onnx_path)
    return path.with_name(path.stem + ".weights.safetensors")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_weights_bytes(path: Path, meta: Mapping[str, Any]) -> bytes:
    """The weights file's bytes, checked against the hash in ``meta`` (ArtifactError if they
    differ: a tampered, truncated or foreign weights file is not loaded)."""
    if path.suffix != ".safetensors":
        raise ArtifactError(f"{path.name!r} is not a safetensors weights file (older exports pickled their weights, "
                            "which hvlm-export no longer loads)", "re-export the model with this version.")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ArtifactError(f"cannot read the weights file {str(path)!r}: {err}") from err
    want = meta.get("weights_sha256")
    if want is None:
        raise ArtifactError(f"the metadata has no weights hash for {path.name!r}", "re-export the model.")
    if sha256_of(data) != want:
        raise ArtifactError(f"weights file {path.name!r} does not match the model it sits beside (SHA-256 differs: "
                            "changed, truncated or from another export)", "re-export the model, or restore the file.")
    return data


def engine_sidecar_path(engine_path: str | os.PathLike) -> Path:
    """The JSON sidecar written beside an engine (``model.engine`` -> ``model.engine.json``)."""
    path = Path(engine_path)
    return path.with_suffix(path.suffix + ".json")


def encode_metadata(values: Mapping[str, Any]) -> dict[str, str]:
    """{key: value} -> the ``hvlm_export.*`` metadata_props strings."""
    unknown = sorted(set(values) - set(METADATA_KEYS))
    if unknown:
        raise ValueError(f"unknown metadata keys {unknown}; add them to artifacts.METADATA_KEYS")
    return {META_PREFIX + k: (json.dumps(v, sort_keys=True) if METADATA_KEYS[k] == "json" else str(v))
            for k, v in values.items()}


def decode_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    """Prefix-stripped metadata strings -> values (keys this version does not know are kept as strings)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if METADATA_KEYS.get(key) == "json":
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError as err:
                raise ArtifactError(f"metadata {META_PREFIX + key} is not valid JSON: {err}", "re-export the model.") from err
        else:
            out[key] = value
    return out


#: the graph doc_string of an export starts with this, then the metadata_props as JSON: tools
#: that rewrite a model (onnx-graphsurgeon, polygraphy sanitize) drop metadata_props but keep it
DOC_PREFIX = "hvlm-export metadata (copy of the hvlm_export.* metadata_props): "


def metadata_doc_string(props: Mapping[str, str]) -> str:
    """The graph doc_string carrying a copy of the ``hvlm_export.*`` metadata_props."""
    return DOC_PREFIX + json.dumps(dict(props), sort_keys=True)


def props_from_doc_string(doc: str) -> dict[str, str]:
    """The metadata_props copy in a graph doc_string (empty if there is none or it is damaged)."""
    if not doc or not doc.startswith(DOC_PREFIX):
        return {}
    try:
        props = json.loads(doc[len(DOC_PREFIX):])
    except json.JSONDecodeError:
        return {}
    return {k: v for k, v in props.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(props, dict) else {}


def strip_prefix(props: Mapping[str, str]) -> dict[str, str]:
    """The ``hvlm_export.*`` entries of ``props``, prefix stripped."""
    return {k[len(META_PREFIX):]: v for k, v in props.items() if k.startswith(META_PREFIX)}


def metadata_of(model: Any) -> dict[str, str]:
    """The ``hvlm_export.*`` metadata strings of a loaded onnx.ModelProto, prefix stripped
    (from the graph doc_string copy when a tool dropped the metadata_props)."""
    found = strip_prefix({p.key: p.value for p in model.metadata_props})
    return found or strip_prefix(props_from_doc_string(model.graph.doc_string))


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``hvlm_export.*`` metadata strings of an .onnx file (weights not loaded)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError as err:
        raise ArtifactError(f"{str(path)!r} does not exist") from err
    except Exception as err:  # protobuf DecodeError and friends
        raise ArtifactError(f"{str(path)!r} is not a readable ONNX file: {err}", "re-export it.") from err
    return metadata_of(model)


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` if a file can be written there; else ArtifactError saying why (checked
    before a long run, so nothing is computed only to fail at the end)."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise ArtifactError(f"{what} {str(path)!r} is a directory", "give a file name.")
    if not parent.is_dir():
        raise ArtifactError(f"the directory of the {what} {str(parent)!r} does not exist", "create it first.")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ArtifactError(f"cannot write the {what} {str(path)!r}: permission denied",
                            "choose a writable location.")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_engine_sidecar(engine_path: str | os.PathLike, sidecar: Mapping[str, Any]) -> Path:
    """Write the engine's JSON sidecar (keys: onnx, onnx_dir, onnx_metadata, precision,
    profiles, tensorrt_version, plugins, aot_plugins)."""
    path = engine_sidecar_path(engine_path)
    write_atomic(path, json.dumps(dict(sidecar), indent=2).encode())
    return path


def read_engine_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    path = engine_sidecar_path(engine_path)
    if not path.is_file():
        raise ArtifactError(f"engine metadata {path.name!r} is missing", "rebuild with `hvlm-export build`.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"engine metadata {path.name!r} is not valid JSON: {err}", "rebuild the engine.") from err


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Decoded hvlm_export metadata of an .onnx file, or of the ONNX file an engine was built
    from; plus ``weights_dir`` (where the weights file is) and ``artifact`` ("onnx" or "engine").
    An empty dict (beside those two) means the file was not exported by hvlm-export."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{str(path)!r} does not exist or is not a file")
    if path.suffix in ENGINE_SUFFIXES:
        sidecar = read_engine_sidecar(path)
        meta = decode_metadata(sidecar.get("onnx_metadata", {}))
        weights_dir = Path(sidecar.get("onnx_dir", path.parent))
        kind = "engine"
    else:
        meta = decode_metadata(read_onnx_metadata(path))
        weights_dir, kind = path.parent, "onnx"
    if not (weights_dir / meta.get("weights", "")).is_file():
        weights_dir = path.parent
    return {**meta, "weights_dir": str(weights_dir), "artifact": kind}
