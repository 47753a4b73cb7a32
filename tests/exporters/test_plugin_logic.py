"""The SelectiveScan plugin's shape/dtype/attribute logic, called directly (no TensorRT)."""

from __future__ import annotations

import numpy as np
import pytest

from hvlm_export.plugins import selective_scan_logic as logic

GOOD = [(2, 8, 100), (2, 8, 100), (8, 4), (2, 4, 100), (2, 4, 100), (8,), (8,), (2, 8, 4)]
DYNAMIC = [("?", 8, "?"), ("?", 8, "?"), (8, 4), ("?", 4, "?"), ("?", 4, "?"), (8,), (8,), ("?", 8, 4)]


def test_identity_matches_an_exported_node(exported):
    """The plugin claims exactly the node an export writes: TensorRT matches op type, the
    plugin_namespace/plugin_version attributes and the input/output arity."""
    import onnx

    model = onnx.load(exported("mamba"))
    (node,) = [n for n in model.graph.node if n.domain == "hvlm"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == logic.PLUGIN_NAME
    assert attrs["plugin_namespace"].decode() == logic.PLUGIN_NAMESPACE
    assert attrs["plugin_version"].decode() == logic.PLUGIN_VERSION
    assert len(node.input) == len(logic.INPUTS) and len(node.output) == len(logic.OUTPUTS)
    (fn,) = model.functions
    assert (fn.domain, fn.name) == (logic.PLUGIN_NAMESPACE, logic.PLUGIN_NAME)
    assert tuple(fn.input) == logic.INPUTS and tuple(fn.output) == logic.OUTPUTS


def test_output_shapes():
    assert logic.output_shapes(GOOD) == ((2, 8, 100), (2, 8, 4))
    assert logic.output_shapes(DYNAMIC) == (("?", 8, "?"), ("?", 8, 4))


@pytest.mark.parametrize(
    "index, shape, match",
    [(1, (2, 8, 99), "delta"), (2, (7, 4), "A"), (3, (2, 5, 100), "input B"), (5, (9,), "input D"),
     (0, (2, 8), "rank 3"), (6, (8, 1), "rank 1")],
)
def test_bad_shapes(index, shape, match):
    shapes = list(GOOD)
    shapes[index] = shape
    with pytest.raises(logic.PluginInputError, match=match):
        logic.check_input_shapes(shapes)


def test_wrong_input_count():
    with pytest.raises(logic.PluginInputError, match="8 inputs"):
        logic.check_input_shapes(GOOD[:7])


@pytest.mark.parametrize("data", ["float32", "float16", "bfloat16"])
def test_dtypes(data):
    f32 = "float32"
    ins = [data, data, f32, data, data, f32, f32, f32]
    assert logic.output_dtypes(ins) == (data, f32)
    assert logic.supports_dtypes(ins + [data, f32])
    assert not logic.supports_dtypes(ins + [f32 if data != f32 else "float16", f32])


@pytest.mark.parametrize("bad", [
    ["float16", "float32", "float32", "float16", "float16", "float32", "float32", "float32"],  # delta differs from u
    ["float16", "float16", "float16", "float16", "float16", "float32", "float32", "float32"],  # A must be fp32
    ["float16", "float16", "float32", "float16", "float16", "float32", "float32", "float16"],  # state must be fp32
    ["int32", "int32", "float32", "int32", "int32", "float32", "float32", "float32"],          # not a float type
])
def test_bad_dtypes(bad):
    assert not logic.supports_dtypes(bad)
    with pytest.raises(logic.PluginInputError):
        logic.output_dtypes(bad)


def test_supports_position_walks_like_tensorrt():
    """TensorRT asks position by position; only consistent prefixes are accepted."""
    chosen = []
    plan = ["float16", "float16", "float32", "float16", "float16", "float32", "float32", "float32", "float16",
            "float32"]
    for dtype in plan:
        candidates = [d for d in ("float32", "float16", "bfloat16") if logic.supports_position(chosen + [d])]
        assert dtype in candidates
        chosen.append(dtype)
    assert not logic.supports_position(["float16", "bfloat16"])
    assert not logic.supports_position(chosen + ["float32"])  # past the last position


@pytest.mark.parametrize("fields, value", [({}, False), ({"delta_softplus": 1}, True),
                                           ({"delta_softplus": np.array([0], np.int32)}, False)])
def test_attrs(fields, value):
    attrs = logic.ScanAttrs.from_fields(fields)
    assert attrs.delta_softplus is value and attrs.to_fields() == {"delta_softplus": int(value)}


@pytest.mark.parametrize("raw", [2, "yes", np.array([], np.int32)])
def test_bad_attrs(raw):
    with pytest.raises(logic.PluginInputError):
        logic.ScanAttrs.from_fields({"delta_softplus": raw})
