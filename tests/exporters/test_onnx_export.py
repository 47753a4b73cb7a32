"""Export every mechanism and config to ONNX and check the graph contract."""

from __future__ import annotations


import onnx
import pytest

from hvlm_export.artifacts import SCAN_DOMAIN, read_metadata
from hvlm_export.exporters.onnx_export import export_onnx
from hvlm_export.registry import REGISTRY

NAMES = list(REGISTRY)
CONFIGS = ["sparse_attention", "linear_attention"]
SCAN_LAYERS = {"mamba": 1, "linear_block": 1, "linear_attention": 1}


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", NAMES + CONFIGS)
def test_graph_contract(exported, name):
    path = exported(name)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    spec_inputs = REGISTRY[name].inputs if name in REGISTRY else None
    names = [i.name for i in model.graph.input]
    if spec_inputs:
        assert tuple(names) == spec_inputs
    assert [o.name for o in model.graph.output] == ["y"]
    assert _dims(model.graph.input[0])[:2] == ["batch", "seq"]
    assert _dims(model.graph.output[0])[:2] == ["batch", "seq"]
    if "memory" in names:
        assert _dims(model.graph.input[1])[:2] == ["batch", "mem_seq"]
    meta = read_metadata(path)
    assert meta["precision"] == "fp32" and meta["opset"] == 20 and meta["dynamic"] is True
    assert meta["source"]["kind"] in ("registry", "config")
    assert meta["input_shapes"]["x"] == [2, 48, model.graph.input[0].type.tensor_type.shape.dim[2].dim_value]
    assert (path.parent / meta["weights"]).is_file() and meta["artifact"] == "onnx"


@pytest.mark.parametrize("name", NAMES + CONFIGS)
def test_one_scan_node_per_mamba_layer(exported, name):
    model = onnx.load(exported(name))
    scans = [n for n in model.graph.node if n.domain == SCAN_DOMAIN]
    assert len(scans) == SCAN_LAYERS.get(name, 0)
    for node in scans:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert node.op_type == "SelectiveScan"
        assert attrs == {"delta_softplus": 1, "plugin_namespace": b"hvlm", "plugin_version": b"2"}
    functions = [(f.domain, f.name) for f in model.functions]
    assert functions == ([("hvlm", "SelectiveScan")] if scans else [])
    for f in model.functions:
        assert not any(n.op_type in ("Loop", "Scan") for n in f.node), "the body must have no Loop/Scan"


def _node_count(model):
    return len(model.graph.node) + sum(len(f.node) for f in model.functions)


@pytest.mark.parametrize("scan", ["custom", "inline"])
def test_node_count_does_not_grow_with_length(tmp_path, scan):
    from hvlm_export.exporters.onnx_export import export_onnx

    counts = []
    for length in (8, 300):
        path = export_onnx("mamba", tmp_path / f"m{length}.onnx", model_kwargs={"dim": 32, "state_size": 4},
                           dynamic=False, seq_len=length, batch=1, scan=scan)
        counts.append(_node_count(onnx.load(path)))
    assert counts[0] == counts[1], f"node counts at L=8 and L=300: {counts}"
    assert counts[0] < 2000


def test_inline_scan_has_no_custom_domain(exported):
    model = onnx.load(exported("mamba", scan="inline"))
    assert not model.functions
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert "hvlm" not in {o.domain for o in model.opset_import}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_types(exported, precision):
    """Inputs/outputs carry the precision; softmax statistics and the scan stay float32."""
    elem = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}[precision]
    for name in ("strided", "mamba"):
        model = onnx.shape_inference.infer_shapes(onnx.load(exported(name, precision)))
        assert model.graph.input[0].type.tensor_type.elem_type == elem
        assert model.graph.output[0].type.tensor_type.elem_type == elem
        types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
        for node in model.graph.node:
            if node.op_type in ("Softmax", "Exp"):
                assert types.get(node.input[0]) == onnx.TensorProto.FLOAT, f"{name}: {node.op_type} not in float32"
            if node.op_type == "SelectiveScan":
                assert types.get(node.input[2]) == onnx.TensorProto.FLOAT, "A must stay float32"


def test_static_export_fixes_shapes(exported):
    model = onnx.load(exported("strided", dynamic=False, batch=2, seq_len=24))
    assert _dims(model.graph.input[0]) == [2, 24, 64]


def test_external_data(tmp_path):
    """Weights in <name>.onnx.data beside the graph; the file still checks, loads and validates."""
    from hvlm_export.exporters.onnx_export import export_onnx
    from hvlm_export.validators.parity import validate

    path = export_onnx("mamba", tmp_path / "m.onnx", model_kwargs={"dim": 32, "state_size": 4}, external_data=True)
    assert (tmp_path / "m.onnx.data").is_file()
    inits = onnx.load(path, load_external_data=False).graph.initializer
    external = [i.name for i in inits if i.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) >= 3, external  # small tensors may stay inline
    assert validate(path, shapes=[{"batch": 2, "seq": 40}])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hvlm-export-")], "temp dir left behind"


def test_a_size_frozen_while_tracing_is_caught(tmp_path, monkeypatch):
    """Traced at 48 tokens, a 128-token chunk count is 1 and gets baked into the graph; the
    exporter's check at other shapes must refuse the file (and write nothing)."""
    from hvlm_export.errors import ExportError
    from hvlm_export.exporters import onnx_export as onnx_exporter

    monkeypatch.setattr(onnx_exporter, "trace_inputs", lambda inputs, spec, kwargs: inputs)
    path = tmp_path / "p.onnx"
    with pytest.raises(ExportError, match="frozen while tracing"):
        export_onnx("performer", path, model_kwargs={"dim": 64, "num_heads": 4, "chunk_size": 128}, seq_len=48)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_trace_length_passes_every_window():
    from hvlm_export.registry import REGISTRY

    for name, spec in REGISTRY.items():
        kwargs = spec.kwargs()
        assert spec.trace_length(kwargs) > max(spec.lengths(kwargs)), name


def test_seed_makes_exports_reproducible(tmp_path):
    """One seed, one model: fp32 and fp16 exports and a re-export hold the same weights; another
    seed another model; the caller's torch RNG is untouched; the seed is in the metadata."""
    import torch

    from hvlm_export.validators.reference import load_reference

    kwargs = {"dim": 32, "num_heads": 4}
    before = torch.random.get_rng_state()
    a = export_onnx("strided", tmp_path / "a.onnx", model_kwargs=kwargs, seed=3)
    b = export_onnx("strided", tmp_path / "b.onnx", model_kwargs=kwargs, seed=3, precision="fp16")
    c = export_onnx("strided", tmp_path / "c.onnx", model_kwargs=kwargs, seed=4)
    assert torch.equal(torch.random.get_rng_state(), before), "export must not move the global RNG"
    wa, wb, wc = (load_reference(p).module.state_dict() for p in (a, b, c))
    assert all(torch.equal(wa[k].half().float(), wb[k]) for k in wa)
    assert not torch.equal(wa["q_proj.weight"], wc["q_proj.weight"])
    assert read_metadata(a)["seed"] == 3 and read_metadata(c)["seed"] == 4
