"""Triton Inference Server model repositories (DESIGN.md section 9): :func:`write_repository`.

    REPO/<name>/config.pbtxt
    REPO/<name>/1/model.onnx            --backend onnxruntime (the default)
    REPO/<name>/1/model.plan            --backend tensorrt (an engine from `hvlm-export build`)
    REPO/<name>/1/model.py + model.onnx --backend python (hvlm_export.runtime inside Triton)
    REPO/<name>/initial_state/*         step graphs whose state does not start at zero

The config is Triton's text protobuf (``model_config.proto``; the tests parse every config with
tritonclient's ``model_config_pb2``): inputs and outputs with the graph's names and types, -1
for its dynamic axes, the batch axis left to ``max_batch_size`` and dynamic batching, instance
groups on the CPU or on the listed GPUs. A streaming step graph (``--mode step``) gets the
sequence batcher instead, with implicit state: Triton keeps each sequence's ``present.*``
outputs and feeds them back as its ``past.*`` inputs, starting from the state's initial value,
so a client sends ``x`` only.

What Triton does with the files was not run here (no server in the tests of this module); the
configs follow the schema, and the ONNX file is the exported one, unchanged.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from hvlm_export.artifacts import ENGINE_SUFFIXES, read_engine_sidecar, read_metadata, write_atomic
from hvlm_export.errors import ArtifactError, ServingError

__all__ = ["write_repository", "BACKENDS", "TensorSpec"]

BACKENDS = ("onnxruntime", "tensorrt", "python")
_TRITON_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                 onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.INT64: "TYPE_INT64",
                 onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.BOOL: "TYPE_BOOL"}
#: numpy dtype of a Triton type, for initial-state files (bf16 has none in numpy)
_NUMPY_OF_TRITON = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64,
                    "TYPE_INT32": np.int32, "TYPE_BOOL": np.bool_}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_MODEL_PY = Path(__file__).with_name("triton_python_model.py")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, Triton type, dims (-1 for a dynamic axis), whether
    axis 0 is the dynamic batch axis."""

    name: str
    triton_type: str
    dims: tuple[int, ...]
    batched: bool


def _graph_specs(onnx_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as err:  # onnx raises several types for a damaged file
        raise ArtifactError(f"cannot read {onnx_path.name!r} as ONNX: {err}") from err

    def spec(value) -> TensorSpec:
        t = value.type.tensor_type
        if t.elem_type not in _TRITON_TYPES:
            raise ServingError(f"tensor {value.name!r} has ONNX type {onnx.TensorProto.DataType.Name(t.elem_type)}, "
                               "which this repository writer does not map to a Triton type")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        batched = bool(t.shape.dim) and t.shape.dim[0].dim_param == "batch"
        return TensorSpec(value.name, _TRITON_TYPES[t.elem_type], dims, batched)

    return [spec(v) for v in graph.input], [spec(v) for v in graph.output]


def _dims(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _io_block(kind: str, specs: Sequence[TensorSpec], batching: bool) -> str:
    items = []
    for s in specs:
        dims = s.dims[1:] if batching else s.dims
        items.append(f'  {{\n    name: "{s.name}"\n    data_type: {s.triton_type}\n    dims: {_dims(dims)}\n  }}')
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def _instance_group(instances: int, gpus: Sequence[int] | None) -> str:
    if gpus:
        return (f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_GPU\n"
                f"    gpus: {_dims(gpus)}\n  }}\n]\n")
    return f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]\n"


def _state_block(meta: dict, inputs: Sequence[TensorSpec], model_dir: Path) -> tuple[str, list[TensorSpec], list[str]]:
    """The sequence batcher's implicit states of a step graph; returns (config text, the
    inputs a client still sends, the outputs Triton keeps as state)."""
    by_name = {s.name: s for s in inputs}
    states, kept_out = [], []
    for st in meta.get("state", []):
        past, present = f"past.{st['name']}", f"present.{st['name']}"
        if past not in by_name:
            raise ArtifactError(f"step graph metadata names state {st['name']!r} but the graph has no input {past!r}")
        spec = by_name[past]
        dims = [0 if d == "past" else d for d in st["shape"][1:]]  # a growing cache starts empty
        if st.get("fill", 0.0) == 0.0:
            init = "zero_data: true"
        else:
            file = f"{st['name']}.bin"
            (model_dir / "initial_state").mkdir(parents=True, exist_ok=True)
            if spec.triton_type not in _NUMPY_OF_TRITON:
                raise ServingError(f"state {past!r} starts at {st['fill']} in {spec.triton_type}, which an initial-state "
                                   "file cannot hold", "export the step graph in fp32 or fp16.")
            value = np.full(dims, st["fill"], dtype=_NUMPY_OF_TRITON[spec.triton_type])  # the graph input's type
            (model_dir / "initial_state" / file).write_bytes(value.tobytes())
            init = f'data_file: "{file}"'
        states.append(f'    {{\n      input_name: "{past}"\n      output_name: "{present}"\n'
                      f"      data_type: {spec.triton_type}\n      dims: {_dims(spec.dims[1:])}\n"
                      f'      initial_state {{\n        data_type: {spec.triton_type}\n        dims: {_dims(dims)}\n'
                      f'        {init}\n        name: "{st["name"]}_start"\n      }}\n    }}')
        kept_out.append(present)
    sent = [s for s in inputs if not s.name.startswith("past.")]
    text = "sequence_batching {\n  state [\n" + ",\n".join(states) + "\n  ]\n}\n"
    return text, sent, kept_out


def _source(model: Path, backend: str) -> tuple[Path, Path | None, dict]:
    """(the ONNX graph that describes the inputs/outputs, the engine or None, its metadata)."""
    if not model.is_file():
        raise ArtifactError(f"{str(model)!r} does not exist or is not a file")
    if backend == "tensorrt":
        if model.suffix not in ENGINE_SUFFIXES:
            raise ServingError(f"--backend tensorrt serves an engine ({', '.join(ENGINE_SUFFIXES)}), got {model.name!r}",
                               "build one first: hvlm-export build MODEL.onnx -o model.plan")
        sidecar = read_engine_sidecar(model)
        return Path(sidecar["onnx_dir"]) / sidecar["onnx"], model, read_metadata(model)
    if model.suffix != ".onnx":
        raise ServingError(f"--backend {backend} serves an .onnx file, got {model.name!r}",
                           "for an engine use --backend tensorrt.")
    return model, None, read_metadata(model)


def write_repository(
    model: str | os.PathLike,
    repository: str | os.PathLike,
    *,
    name: str | None = None,
    backend: str = "onnxruntime",
    max_batch_size: int = 8,
    instances: int = 1,
    gpus: Sequence[int] | None = None,
    max_queue_delay_us: int = 100,
    version: int = 1,
) -> Path:
    """Write ``repository/<name>`` for ``model`` (an exported .onnx, or an engine for the
    TensorRT backend) and return the model directory. ``name`` defaults to the file's stem.

    Raises ServingError for options that cannot work (unknown backend, a batch size with a
    fixed-batch graph, a name Triton would reject, an existing model directory), and
    ArtifactError for an unreadable model."""
    model, repository = Path(model), Path(repository)
    if backend not in BACKENDS:
        raise ServingError(f"unknown backend {backend!r}", f"valid choices are {', '.join(BACKENDS)}.")
    for label, value, low in (("max batch size", max_batch_size, 0), ("instances", instances, 1),
                              ("max queue delay (us)", max_queue_delay_us, 0), ("version", version, 1)):
        if not isinstance(value, int) or value < low:
            raise ServingError(f"{label} must be an integer >= {low}, got {value!r}")
    if gpus is not None and any(not isinstance(g, int) or g < 0 for g in gpus):
        raise ServingError(f"--gpus takes GPU indices (integers >= 0), got {list(gpus)}")
    graph, engine, meta = _source(model, backend)
    name = name or model.stem
    if not _NAME.match(name):
        raise ServingError(f"model name {name!r} has characters Triton does not accept in a directory name",
                           "use letters, digits, '_', '-' and '.'.")
    inputs, outputs = _graph_specs(graph)
    step = meta.get("mode") == "step"
    if max_batch_size and not all(s.batched for s in inputs + outputs):
        raise ServingError(f"{model.name!r} has a fixed batch axis (exported with --static?); Triton can only batch "
                           "a dynamic one", "use --max-batch-size 0, or re-export without --static.")
    if step and not max_batch_size:
        raise ServingError("a step graph is served with the sequence batcher, which needs --max-batch-size >= 1")
    model_dir = repository / name
    if model_dir.exists():
        raise ServingError(f"{str(model_dir)!r} already exists", "choose another --name or remove it first.")
    partial = repository / f".{name}.partial"  # written whole, then renamed: no half model on failure
    shutil.rmtree(partial, ignore_errors=True)
    try:
        (partial / str(version)).mkdir(parents=True)
        _write_model_dir(partial, name, backend, max_batch_size, instances, gpus, max_queue_delay_us, version,
                         meta, inputs, outputs, graph, engine)
        os.replace(partial, model_dir)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise ServingError(f"cannot write the model directory under {str(repository)!r}: {err}") from err
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return model_dir


def _write_model_dir(model_dir: Path, name: str, backend: str, max_batch_size: int, instances: int,
                     gpus: Sequence[int] | None, max_queue_delay_us: int, version: int, meta: dict,
                     inputs: list[TensorSpec], outputs: list[TensorSpec], graph: Path, engine: Path | None) -> None:
    step = meta.get("mode") == "step"
    config = [f'name: "{name}"\n', f'backend: "{backend}"\n', f"max_batch_size: {max_batch_size}\n"]
    sent, kept = inputs, []
    if step:
        state_text, sent, kept = _state_block(meta, inputs, model_dir)
    config.append(_io_block("input", sent, bool(max_batch_size)))
    config.append(_io_block("output", [s for s in outputs if s.name not in kept], bool(max_batch_size)))
    if step:
        config.append(state_text)
    elif max_batch_size:
        config.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n")
    config.append(_instance_group(instances, gpus))
    _copy_model(graph, engine, model_dir / str(version), backend)
    write_atomic(model_dir / "config.pbtxt", "".join(config).encode())


def _copy_model(graph: Path, engine: Path | None, version_dir: Path, backend: str) -> None:
    if backend == "tensorrt":
        shutil.copyfile(engine, version_dir / "model.plan")
        return
    shutil.copyfile(graph, version_dir / "model.onnx")
    data = graph.with_name(graph.name + ".data")  # external weights, referenced by this file name
    if data.is_file():
        shutil.copyfile(data, version_dir / data.name)
    if backend == "python":
        shutil.copyfile(_MODEL_PY, version_dir / "model.py")
