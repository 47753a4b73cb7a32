"""TensorRT end to end: build an engine for every mechanism and check three-way parity.

Run on a machine with an NVIDIA GPU and TensorRT 10.x/11.x: ``pytest -m trt tests/trt``.
Without TensorRT every test here is skipped with the reason.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hvlm_export.registry import REGISTRY

pytestmark = pytest.mark.trt
trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt on an NVIDIA GPU machine)")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("TensorRT engines need a CUDA GPU", allow_module_level=True)

from hvlm_export import runtime  # noqa: E402
from hvlm_export.errors import ArtifactError, BuildError, RuntimeInputError  # noqa: E402
from hvlm_export.artifacts import engine_sidecar_path  # noqa: E402
from hvlm_export.exporters.engine_build import Profile, build_engine  # noqa: E402
from hvlm_export.validators.parity import validate  # noqa: E402

NAMES = list(REGISTRY) + ["sparse_attention", "linear_attention"]
PROFILE = {"x": ((1, 1, 64), (2, 64, 64), (3, 128, 64)), "memory": ((1, 1, 64), (2, 16, 64), (3, 64, 64))}


def _profile(path):
    import onnx

    names = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
    return Profile({n: PROFILE[n] for n in names})


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_three_way_parity(exported, name, precision):
    """validate() builds an engine spanning the grid and compares eager, ORT and TensorRT."""
    path = exported(name, precision)
    report = validate(path, backends=["tensorrt"] + (["onnxruntime"] if precision != "bf16" else []))
    assert "tensorrt" in report.backends, report.skipped
    assert report, report.summary()


def test_engine_runtime_and_profile_errors(exported, tmp_path):
    path = exported("strided")
    dim = 64
    profile = Profile({"x": ((1, 1, dim), (2, 32, dim), (2, 64, dim))})
    engine = build_engine(path, tmp_path / "s.engine", profiles=[profile], timing_cache=tmp_path / "cache.bin")
    assert (tmp_path / "cache.bin").is_file()
    meta = json.loads(engine_sidecar_path(engine).read_text())
    assert meta["tensorrt_version"] == trt.__version__ and meta["profiles"][0]["x"][2] == [2, 64, dim]
    session = runtime.load(engine)
    out = session.run({"x": np.ones((2, 17, dim), np.float32)})
    assert out["y"].shape == (2, 17, dim)
    with pytest.raises(RuntimeInputError, match="outside the engine's profile"):
        session.run({"x": np.ones((2, 65, dim), np.float32)})
    assert validate(engine)


def test_several_profiles(exported, tmp_path):
    path = exported("strided")
    small = Profile({"x": ((1, 1, 64), (1, 16, 64), (1, 32, 64))})
    large = Profile({"x": ((1, 33, 64), (2, 200, 64), (2, 400, 64))})
    session = runtime.load(build_engine(path, tmp_path / "p.engine", profiles=[small, large]))
    assert len(session.profiles) == 2
    for length in (20, 300, 20):  # switches profile both ways
        assert session.run({"x": np.ones((1, length, 64), np.float32)})["y"].shape == (1, length, 64)


def test_scan_plugin_is_used(exported, tmp_path):
    engine = build_engine(exported("mamba"), tmp_path / "m.engine",
                          profiles=[Profile({"x": ((1, 1, 64), (1, 64, 64), (2, 256, 64))})])
    meta = json.loads(engine_sidecar_path(engine).read_text())
    assert meta["plugins"], "the SelectiveScan plugin must be registered"
    report = validate(engine, shapes=[{"batch": 1, "seq": 33}, {"batch": 2, "seq": 256}])
    assert report, report.summary()


def test_engine_version_mismatch_is_refused(exported, tmp_path):
    engine = build_engine(exported("cross_memory"), tmp_path / "c.engine", profiles=[_profile(exported("cross_memory"))])
    meta_path = engine_sidecar_path(engine)
    meta = json.loads(meta_path.read_text())
    meta["tensorrt_version"] = "9.0.0"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="built with TensorRT 9.0.0"):
        runtime.load(engine)


def test_parser_errors_are_reported(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="acme")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    bad = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("acme", 1)]), bad)
    with pytest.raises(BuildError, match="could not parse"):
        build_engine(bad, tmp_path / "bad.engine", profiles=[Profile({"x": ((1, 4),) * 3})])
    assert not (tmp_path / "bad.engine").exists()
