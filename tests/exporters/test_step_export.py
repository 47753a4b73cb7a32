"""Streaming step graphs: export (mode='step'), their inputs/outputs/metadata, streaming
through ONNX Runtime against eager forward, and what cannot be exported as a step."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from hvlm_export import runtime
from hvlm_export.artifacts import SCAN_DOMAIN, read_metadata
from hvlm_export.errors import ExportError
from hvlm_export.exporters.onnx_export import export_onnx
from hvlm_export.validators.parity import validate
from hvlm_export.validators.reference import load_reference
from hvlm_export.validators.trt_lint import lint_tensorrt

#: registry mechanism -> the overrides that make it causal (its step graph exists)
STREAMING = {"mamba": {}, "performer": {"causal": True}, "strided": {"causal": True},
             "local_global": {"causal": True}, "linear_block": {}, "hierarchical_block": {"causal": True}}
STATE = {"mamba": ["conv", "ssm"], "performer": ["sums", "frame"], "strided": ["k", "v"],
         "local_global": ["k", "v", "pos"], "linear_block": ["attn.conv", "attn.ssm"],
         "hierarchical_block": ["attn.k", "attn.v", "attn.pos"]}


@pytest.mark.parametrize("name", list(STREAMING))
def test_step_graph_io_and_metadata(exported, name):
    path = exported(name, overrides=STREAMING[name], mode="step")
    model = onnx.load(path)
    assert [i.name for i in model.graph.input] == ["x", *(f"past.{s}" for s in STATE[name])]
    assert [o.name for o in model.graph.output] == ["y", *(f"present.{s}" for s in STATE[name])]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[:2] == ["batch", "chunk"]
    meta = read_metadata(path)
    assert meta["mode"] == "step" and [s["name"] for s in meta["state"]] == STATE[name]
    assert all(s["shape"][0] == "batch" and s["dtype"] in ("float32", "int64") for s in meta["state"])
    assert not [f for f in lint_tensorrt(path) if f.severity == "error"]
    scans = [n for n in model.graph.node if n.domain == SCAN_DOMAIN]
    assert len(scans) == (1 if name in ("mamba", "linear_block") else 0)


@pytest.mark.parametrize("name", list(STREAMING))
def test_step_graph_validates_in_every_chunking(exported, name):
    report = validate(exported(name, overrides=STREAMING[name], mode="step"))
    assert report, report.summary()
    labels = {k for c in report.cases for k in c.shape if k.startswith("chunks:")}
    assert labels == {"chunks:tokens", "chunks:prefill+tokens", "chunks:random"}


def test_fp16_step_graph_validates(exported):
    assert validate(exported("mamba", "fp16", mode="step"))


def test_stream_prefill_then_decode_matches_forward(exported):
    path = exported("local_global", overrides=STREAMING["local_global"], mode="step")
    module = load_reference(path).module
    x = np.random.default_rng(1).standard_normal((2, 30, module.dim)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    stream = runtime.Stream(runtime.load(path), 2)
    got = np.concatenate([stream.feed(x[:, :20])] + [stream.feed(x[:, t:t + 1]) for t in range(20, 30)], 1)
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max() + 1e-6
    assert stream.position == 30 and stream.state["pos"].tolist() == [30, 30]
    stream.reset()
    assert stream.position == 0 and stream.state["pos"].tolist() == [0, 0]


def test_stream_refuses_bad_use(exported):
    with pytest.raises(Exception, match="not a streaming step graph"):
        runtime.Stream(runtime.load(exported("mamba")), 1)
    stream = runtime.Stream(runtime.load(exported("mamba", mode="step")), 2)
    with pytest.raises(Exception, match="batch 3, this stream was opened for batch 2"):
        stream.feed(np.zeros((3, 1, 64), np.float32))
    with pytest.raises(Exception, match=r"\(B, T, E\)"):
        stream.feed(np.zeros((2, 64), np.float32))
    with pytest.raises(Exception, match="batch_size must be a positive int"):
        runtime.Stream(runtime.load(exported("mamba", mode="step")), 0)


@pytest.mark.parametrize("name", ["strided", "cross_memory", "performer"])
def test_non_causal_layers_have_no_step_graph(tmp_path, name):
    from hvlm_export.registry import REGISTRY

    overrides = {**REGISTRY[name].small, **({"causal": False} if name == "performer" else {})}
    with pytest.raises(ExportError, match="cannot be exported as a step graph"):
        export_onnx(name, tmp_path / "s.onnx", model_kwargs=overrides, mode="step")
    assert not list(tmp_path.iterdir())


def test_bad_mode(tmp_path):
    with pytest.raises(ExportError, match="unknown mode 'stream'"):
        export_onnx("mamba", tmp_path / "m.onnx", mode="stream")


def test_config_stack_of_causal_blocks_streams(tmp_path):
    config = {"name": "causal_stack", "dim": 32, "num_heads": 4, "blocks": [
        {"attention_type": "mamba", "state_size": 4}, {"attention_type": "strided", "stride": 2, "causal": True},
        {"attention_type": "local_global", "local_window": 6, "causal": True},
        {"attention_type": "performer", "causal": True, "chunk_size": 8}]}
    path = export_onnx(config, tmp_path / "stack.onnx", mode="step")
    names = [s["name"] for s in read_metadata(path)["state"]]
    assert names[:2] == ["blocks.0.attn.conv", "blocks.0.attn.ssm"] and "blocks.3.attn.frame" in names
    report = validate(path)
    assert report, report.summary()
