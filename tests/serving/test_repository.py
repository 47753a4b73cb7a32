"""Triton model repositories: every config parses with Triton's own protobuf schema and
matches the graph; step graphs get implicit state; the Python backend's model.py serves the
same numbers as the runtime; bad options are typed errors that leave nothing behind."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import onnx
import pytest
from google.protobuf import text_format

from hvlm_export import runtime
from hvlm_export.artifacts import read_metadata, write_engine_sidecar
from hvlm_export.errors import ArtifactError, ServingError
from hvlm_export.registry import REGISTRY
from hvlm_export.serving import write_repository
from tests.cli.test_cli_errors import cli, fails

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient (test extra) provides Triton's config schema")

TYPES = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32, onnx.TensorProto.FLOAT16: model_config_pb2.TYPE_FP16,
         onnx.TensorProto.INT64: model_config_pb2.TYPE_INT64}


def parse(model_dir):
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def graph_io(path):
    graph = onnx.load(str(path), load_external_data=False).graph

    def info(v):
        t = v.type.tensor_type
        return TYPES[t.elem_type], [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]

    return {v.name: info(v) for v in graph.input}, {v.name: info(v) for v in graph.output}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_forward_config_matches_the_graph(exported, tmp_path, name):
    path = exported(name)
    model_dir = write_repository(path, tmp_path / "repo", name=name, max_batch_size=16, instances=2)
    config = parse(model_dir)
    inputs, outputs = graph_io(path)
    assert (config.name, config.backend, config.max_batch_size) == (name, "onnxruntime", 16)
    for declared, graph in ((config.input, inputs), (config.output, outputs)):
        assert {t.name for t in declared} == set(graph)
        for t in declared:  # the batch axis is Triton's; every other axis as in the graph (-1: dynamic)
            assert (t.data_type, list(t.dims)) == (graph[t.name][0], graph[t.name][1][1:])
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert (model_dir / "1" / "model.onnx").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("name", ["cross_memory", "mamba"])
def test_masked_export_declares_its_masks(exported, tmp_path, name):
    """Padding masks are int64 model inputs with a dynamic length, like the graph's."""
    path = exported(name, with_mask=True)
    config = parse(write_repository(path, tmp_path / "repo", name=name))
    declared = {t.name: (t.data_type, list(t.dims)) for t in config.input}
    masks = {"attention_mask", "memory_mask"} if name == "cross_memory" else {"attention_mask"}
    for mask in masks:
        assert declared[mask] == (model_config_pb2.TYPE_INT64, [-1])
    assert set(declared) == set(graph_io(path)[0])


def test_half_precision_types_and_gpu_instances(exported, tmp_path):
    model_dir = write_repository(exported("mamba", "fp16"), tmp_path, name="m16", gpus=[0, 1])
    config = parse(model_dir)
    assert [t.data_type for t in config.input] == [model_config_pb2.TYPE_FP16]
    group = config.instance_group[0]
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and list(group.gpus) == [0, 1]


@pytest.mark.parametrize("name, overrides", [("mamba", None), ("performer", None), ("local_global", {"causal": True}),
                                             ("strided", {"causal": True})])
def test_step_graphs_get_implicit_state(exported, tmp_path, name, overrides):
    path = exported(name, overrides=overrides, mode="step")
    model_dir = write_repository(path, tmp_path, name="s")
    config = parse(model_dir)
    inputs, outputs = graph_io(path)
    meta_state = read_metadata(path)["state"]
    assert [t.name for t in config.input] == ["x"] and [t.name for t in config.output] == ["y"]
    assert not config.HasField("dynamic_batching") and config.HasField("sequence_batching")
    states = {s.input_name: s for s in config.sequence_batching.state}
    assert set(states) == {f"past.{s['name']}" for s in meta_state}
    for spec in meta_state:
        state = states[f"past.{spec['name']}"]
        assert state.output_name == f"present.{spec['name']}" and state.output_name in outputs
        assert list(state.dims) == inputs[state.input_name][1][1:]
        start = [0 if d == "past" else d for d in spec["shape"][1:]]
        assert list(state.initial_state[0].dims) == start
        if spec["fill"] == 0.0:
            assert state.initial_state[0].zero_data
        else:  # e.g. Performer's frame starts very negative: a data file of that value
            data = (model_dir / "initial_state" / state.initial_state[0].data_file).read_bytes()
            dtype = np.int64 if spec["dtype"] == "int64" else np.float32
            np.testing.assert_array_equal(np.frombuffer(data, dtype).reshape(start), np.full(start, spec["fill"], dtype))


def test_static_graphs_are_served_unbatched(exported, tmp_path):
    path = exported("mamba", dynamic=False)
    with pytest.raises(ServingError, match="fixed batch axis"):
        write_repository(path, tmp_path, name="static")
    assert not (tmp_path / "static").exists() and not list(tmp_path.glob(".*partial"))
    config = parse(write_repository(path, tmp_path, name="static", max_batch_size=0))
    assert config.max_batch_size == 0 and list(config.input[0].dims) == graph_io(path)[0]["x"][1]
    assert not config.HasField("dynamic_batching")


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _Response:
    def __init__(self, output_tensors, error=None):
        self.output_tensors, self.error = output_tensors, error


def _stand_in_backend_utils():
    """What model.py uses of Triton's triton_python_backend_utils, as documented."""
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Tensor = _Tensor
    utils.InferenceResponse = _Response
    utils.TritonError = RuntimeError
    utils.get_input_tensor_by_name = lambda request, name: request.get(name)
    return utils


def test_python_backend_model_serves_the_runtime_numbers(exported, tmp_path, monkeypatch):
    path = exported("cross_memory")
    model_dir = write_repository(path, tmp_path, name="py", backend="python")
    assert (model_dir / "1" / "model.py").is_file() and (model_dir / "1" / "model.onnx").is_file()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _stand_in_backend_utils())
    namespace: dict = {}
    exec(compile((model_dir / "1" / "model.py").read_text(), "model.py", "exec"), namespace)
    model = namespace["TritonPythonModel"]()
    config = json.dumps({"output": [{"name": t.name} for t in parse(model_dir).output]})
    model.initialize({"model_repository": str(model_dir), "model_version": "1", "model_config": config})
    rng = np.random.default_rng(0)
    good = {"x": _Tensor("x", rng.standard_normal((2, 9, 64), dtype=np.float32)),
            "memory": _Tensor("memory", rng.standard_normal((2, 5, 64), dtype=np.float32))}
    bad = {"x": good["x"]}  # no memory: this request fails alone
    first, second = model.execute([good, bad])
    want = runtime.load(path).run({k: v.array for k, v in good.items()})["y"]
    np.testing.assert_array_equal(first.output_tensors[0].array, want)
    assert first.error is None and "memory" in str(second.error)


def test_tensorrt_backend_takes_an_engine(exported, tmp_path):
    path = exported("mamba")
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"serialized engine")
    write_engine_sidecar(engine, {"onnx": path.name, "onnx_dir": str(path.parent), "onnx_metadata": {}})
    model_dir = write_repository(engine, tmp_path / "repo", backend="tensorrt")
    assert (model_dir / "1" / "model.plan").read_bytes() == b"serialized engine"
    assert parse(model_dir).backend == "tensorrt" and [t.name for t in parse(model_dir).input] == ["x"]
    with pytest.raises(ServingError, match="serves an engine"):
        write_repository(path, tmp_path / "repo", name="x", backend="tensorrt")
    with pytest.raises(ServingError, match="serves an .onnx"):
        write_repository(engine, tmp_path / "repo", name="y")


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "triton"}, "unknown backend"),
    ({"instances": 0}, "instances must be an integer >= 1"),
    ({"max_batch_size": -1}, "max batch size must be"),
    ({"gpus": [-1]}, "GPU indices"),
    ({"name": "a/b"}, "characters Triton does not accept"),
])
def test_bad_options_are_typed_errors(exported, tmp_path, kwargs, message):
    with pytest.raises(ServingError, match=message):
        write_repository(exported("mamba"), tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_existing_model_and_missing_files(exported, tmp_path):
    write_repository(exported("mamba"), tmp_path, name="m")
    with pytest.raises(ServingError, match="already exists"):
        write_repository(exported("mamba"), tmp_path, name="m")
    with pytest.raises(ArtifactError, match="does not exist"):
        write_repository(tmp_path / "nope.onnx", tmp_path, name="n")
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ServingError, match="cannot write"):
        write_repository(exported("mamba"), tmp_path / "file", name="m")


def test_cli_writes_a_repository_and_reports_mistakes(exported, tmp_path):
    path = exported("mamba")
    ok = cli("triton-repo", path, "-o", tmp_path / "repo", "--name", "mamba", "--instances", "2")
    assert ok.returncode == 0 and "config.pbtxt" in ok.stdout, ok.stderr
    assert parse(tmp_path / "repo" / "mamba").instance_group[0].count == 2
    fails(cli("triton-repo", path, "-o", tmp_path / "repo", "--name", "mamba"), "already exists")
    fails(cli("triton-repo", path, "-o", tmp_path / "repo", "--backend", "tensorrt"), "hvlm-export build")
