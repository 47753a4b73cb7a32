"""The TensorRT builder's plain-Python parts: profiles, shape args, precision decisions.

TensorRT itself is absent here; the precision/flag decision is tested against two small
stand-ins that expose exactly the attributes TensorRT 10.x and 11.x have (feature detection).
"""

from __future__ import annotations

import enum
import types

import pytest

from hvlm_export.errors import BuildError, TensorRTUnavailableError
from hvlm_export.exporters import engine_build as trt_builder
from hvlm_export.plugins.trt import tensorrt_available
from hvlm_export.exporters.engine_build import Profile, default_profiles, parse_shape_arg

INPUTS = {"x": ["batch", "seq", 64], "memory": ["batch", "mem_seq", 64]}


def test_default_profile_from_axis_names():
    (profile,) = default_profiles(INPUTS)
    assert profile.shapes["x"] == ((1, 1, 64), (1, 512, 64), (8, 8192, 64))
    assert profile.shapes["memory"] == ((1, 1, 64), (1, 64, 64), (8, 2048, 64))
    profile.check(INPUTS)


def test_default_profile_of_a_masked_export_keeps_masks_and_inputs_in_step(exported):
    """The padding masks get the ranges of the axes they mask: a TensorRT profile where x and
    attention_mask could disagree on the sequence length would not build."""
    inputs, _, _ = trt_builder._inspect_onnx(exported("cross_memory", with_mask=True))
    (profile,) = default_profiles(inputs)
    for mask, source in (("attention_mask", "x"), ("memory_mask", "memory")):
        assert [tuple(s[:2]) for s in profile.shapes[mask]] == [tuple(s[:2]) for s in profile.shapes[source]]
    profile.check(inputs)


def test_default_profile_needs_known_axis_names():
    with pytest.raises(BuildError, match="no default range"):
        default_profiles({"x": ["frames", 64]})


@pytest.mark.parametrize(
    "shapes, match",
    [
        ({"x": ((1, 1, 64), (1, 8, 64), (2, 16, 64))}, "missing \\['memory'\\]"),
        ({**{"x": ((1, 1, 64), (1, 8, 64), (2, 16, 64))}, "memory": ((1, 1, 64), (1, 1, 64), (1, 1, 64)),
          "y": ((1,), (1,), (1,))}, "unknown \\['y'\\]"),
        ({"x": ((1, 1, 32), (1, 8, 32), (2, 16, 32)), "memory": ((1, 1, 64),) * 3}, "fixed to 64"),
        ({"x": ((1, 9, 64), (1, 8, 64), (2, 16, 64)), "memory": ((1, 1, 64),) * 3}, "min <= opt <= max"),
        ({"x": ((1, 1), (1, 8), (2, 16)), "memory": ((1, 1, 64),) * 3}, "rank 2"),
        ({"x": ((0, 1, 64), (1, 8, 64), (2, 16, 64)), "memory": ((1, 1, 64),) * 3}, "size 0"),
    ],
)
def test_profile_check(shapes, match):
    with pytest.raises(BuildError, match=match):
        Profile(shapes).check(INPUTS)


def test_parse_shape_arg():
    assert parse_shape_arg("x:1x128x768,memory:1x32x768") == {"x": (1, 128, 768), "memory": (1, 32, 768)}
    for bad in ("x=1x2", "x:1xax3", ":1x2"):
        with pytest.raises(BuildError):
            parse_shape_arg(bad)


def _fake_trt(version: str):
    """Stand-ins exposing the enum members TensorRT 10.x / 11.x document."""
    if version.startswith("10"):
        net = enum.IntEnum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", "STRONGLY_TYPED"], start=0)
        flags = enum.IntEnum("BuilderFlag", ["FP16", "BF16", "INT8", "TF32"], start=0)
    else:
        net = enum.IntEnum("NetworkDefinitionCreationFlag", ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS"], start=0)
        flags = enum.IntEnum("BuilderFlag", ["TF32", "DIRECT_IO"], start=0)
    return types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=net, BuilderFlag=flags)


def test_flags_trt10_typed_graph_uses_strong_typing():
    trt = _fake_trt("10.16.1")
    flags, builder_flags = trt_builder._network_flags(trt, "fp16", None)
    assert flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) and builder_flags == []


def test_flags_trt10_fp32_graph_in_fp16_uses_builder_flag():
    trt = _fake_trt("10.16.1")
    flags, builder_flags = trt_builder._network_flags(trt, "fp32", "fp16")
    assert flags == 0 and builder_flags == ["FP16"]


def test_flags_trt11_is_strongly_typed_by_default():
    trt = _fake_trt("11.1.0")
    assert trt_builder._network_flags(trt, "bf16", None) == (0, [])
    with pytest.raises(BuildError, match="strongly typed only"):
        trt_builder._network_flags(trt, "fp32", "fp16")


def test_flags_refuse_downcasting_a_typed_graph():
    with pytest.raises(BuildError, match="re-export"):
        trt_builder._network_flags(_fake_trt("10.16.1"), "fp16", "bf16")


def test_build_without_tensorrt(exported, tmp_path):
    if tensorrt_available() is None:
        pytest.skip("TensorRT is installed; tests/trt covers the real build")
    with pytest.raises(TensorRTUnavailableError, match="TensorRT is not installed") as info:
        trt_builder.build_engine(exported("strided"), tmp_path / "m.engine")
    assert "pip install tensorrt" in str(info.value)
    assert not (tmp_path / "m.engine").exists()


def test_engine_runtime_without_tensorrt(tmp_path):
    from hvlm_export import runtime

    if tensorrt_available() is None:
        pytest.skip("TensorRT is installed; tests/trt covers the engine runtime")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00" * 16)
    with pytest.raises(TensorRTUnavailableError):
        runtime.load(engine)
