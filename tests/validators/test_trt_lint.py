"""The TensorRT-compatibility lint: clean on every export, and each rule fires when broken."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from hvlm_export.registry import REGISTRY
from hvlm_export.validators.trt_lint import RULES, format_findings, lint_tensorrt

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=20, functions=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets], functions=list(functions))


def _vi(name, elem=F, shape=(2, 3)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _rules(model, severity="error"):
    return {f.rule for f in lint_tensorrt(model) if f.severity == severity}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", list(REGISTRY) + ["sparse_attention", "linear_attention"])
def test_every_export_lints_clean(exported, name, precision):
    findings = lint_tensorrt(exported(name, precision))
    bad = [f for f in findings if f.severity != "info"]
    assert not bad, format_findings(findings)


def test_inline_scan_lints_clean(exported):
    assert not [f for f in lint_tensorrt(exported("mamba", scan="inline")) if f.severity != "info"]


def test_unsupported_op():
    m = _model([helper.make_node("Det", ["x"], ["y"])], [_vi("x", shape=(3, 3))], [_vi("y", shape=())])
    assert "unsupported-op" in _rules(m)


def test_opset_range():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")], opset=8)
    assert "opset-range" in _rules(m)


def test_computed_cumsum_axis():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ReduceMin", ["s"], ["axis"], keepdims=1),
             helper.make_node("CumSum", ["x", "axis"], ["y"])]
    m = _model(nodes, [_vi("x")], [_vi("y")])
    assert "constant-input" in _rules(m)
    const_axis = [helper.make_node("Constant", [], ["axis"], value=helper.make_tensor("a", TensorProto.INT64, [], [1])),
                  helper.make_node("CumSum", ["x", "axis"], ["y"])]
    assert "constant-input" not in _rules(_model(const_axis, [_vi("x")], [_vi("y")]))


def test_reduce_axes_from_input():
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"])]
    m = _model(nodes, [_vi("x"), _vi("axes", TensorProto.INT64, (1,))], [_vi("y")])
    assert "constant-input" in _rules(m)


def test_unsqueeze_axes_from_input():
    m = _model([helper.make_node("Unsqueeze", ["x", "axes"], ["y"])],
               [_vi("x"), _vi("axes", TensorProto.INT64, (1,))], [_vi("y", shape=(1, 2, 3))])
    assert "constant-input" in _rules(m)


def test_loop_with_scan_output_and_dynamic_trip_count():
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Identity", ["v"], ["v_out"]),
         helper.make_node("Identity", ["v"], ["scan_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         _vi("v")],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), _vi("v_out"), _vi("scan_out")],
    )
    loop = helper.make_node("Loop", ["n", "cond", "x"], ["final", "scans"], body=body)
    m = _model([loop], [helper.make_tensor_value_info("n", TensorProto.INT64, []),
                        helper.make_tensor_value_info("cond", TensorProto.BOOL, []), _vi("x")],
               [_vi("final"), _vi("scans", shape=(None, 2, 3))])
    assert "loop-scan-output" in _rules(m)


def test_nesting_depth():
    leaf = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "leaf", [_vi("a")], [_vi("b")])
    graph = leaf
    for depth in range(26):  # nest through then_branch only (both branches would be 2**26 copies)
        node = helper.make_node("If", ["cond"], ["b"], then_branch=graph, else_branch=leaf)
        graph = helper.make_graph([node], f"level{depth}", [], [_vi("b")])
    m = _model(list(graph.node), [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [_vi("b")])
    assert "nesting" in _rules(m)


def test_custom_node_without_function_or_plugin():
    node = helper.make_node("Mystery", ["x"], ["y"], domain="acme")
    m = _model([node], [_vi("x")], [_vi("y")], extra_opsets=[helper.make_opsetid("acme", 1)])
    assert "custom-op" in _rules(m)
    with_ns = helper.make_node("Mystery", ["x"], ["y"], domain="acme", plugin_namespace="acme")
    m2 = _model([with_ns], [_vi("x")], [_vi("y")], extra_opsets=[helper.make_opsetid("acme", 1)])
    assert "custom-op" not in _rules(m2) and "plugin-priority" in _rules(m2, "info")


def test_function_without_plugin_namespace_warns():
    fn = helper.make_function("acme", "Mystery", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])],
                              [helper.make_opsetid("", 20)])
    m = _model([helper.make_node("Mystery", ["x"], ["y"], domain="acme")], [_vi("x")], [_vi("y")],
               functions=[fn], extra_opsets=[helper.make_opsetid("acme", 1)])
    assert "plugin-priority" in _rules(m, "warning")


def test_rule_inside_function_body_is_found():
    fn = helper.make_function("acme", "Bad", ["x"], ["y"], [helper.make_node("Det", ["x"], ["y"])],
                              [helper.make_opsetid("", 20)])
    m = _model([helper.make_node("Bad", ["x"], ["y"], domain="acme", plugin_namespace="acme")],
               [_vi("x", shape=(3, 3))], [_vi("y", shape=())], functions=[fn], extra_opsets=[helper.make_opsetid("acme", 1)])
    findings = [f for f in lint_tensorrt(m) if f.rule == "unsupported-op"]
    assert findings and findings[0].node.startswith("acme::Bad/")


@pytest.mark.parametrize("elem, rule_severity", [(TensorProto.DOUBLE, "warning"), (TensorProto.STRING, "error"),
                                                 (TensorProto.UINT8, "error")])
def test_dtypes(elem, rule_severity):
    nodes = [helper.make_node("Cast", ["x"], ["mid"], to=elem), helper.make_node("Cast", ["mid"], ["y"], to=F)]
    m = _model(nodes, [_vi("x")], [_vi("y")])
    m.graph.value_info.append(_vi("mid", elem))
    assert "dtype" in _rules(m, rule_severity)


def test_einsum_ellipsis():
    m = _model([helper.make_node("Einsum", ["x"], ["y"], equation="...ij->...ji")], [_vi("x")], [_vi("y")])
    assert "version" in _rules(m)


@pytest.mark.parametrize("node, rule", [
    (helper.make_node("TopK", ["x", "k"], ["v", "i"], sorted=0), "op-attribute"),
    (helper.make_node("Resize", ["x", "", "scales"], ["v"], antialias=1), "op-attribute"),
])
def test_attribute_rules(node, rule):
    k = helper.make_tensor("k", TensorProto.INT64, [1], [1])
    scales = helper.make_tensor("scales", F, [2], [1.0, 1.0])
    m = _model([node], [_vi("x")], [_vi(o) for o in node.output if o], initializers=[k, scales])
    assert rule in _rules(m)


def test_every_rule_is_documented():
    assert {"unsupported-op", "constant-input", "loop-scan-output", "custom-op", "nesting", "dtype"} <= set(RULES)


def test_missing_and_corrupt_files(tmp_path):
    from hvlm_export.errors import ArtifactError

    with pytest.raises(ArtifactError):
        lint_tensorrt(tmp_path / "none.onnx")
    (tmp_path / "c.onnx").write_bytes(b"\x01\x02garbage")
    with pytest.raises(ArtifactError):
        lint_tensorrt(tmp_path / "c.onnx")
