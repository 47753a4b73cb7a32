"""Exports with padding masks (``with_mask`` / ``--with-mask``, DESIGN.md section 9).

Every mechanism's masked graph, run by ONNX Runtime on a right-padded batch, gives each
sample's real positions what the eager module gives that sample alone (unpadded) and 0 at
padded positions; the masks are int64 (batch, seq|mem_seq) inputs; validate runs padded
batches; what cannot take a mask says so.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from hvlm_export import runtime
from hvlm_export.artifacts import read_metadata
from hvlm_export.errors import ExportError
from hvlm_export.exporters.onnx_export import export_onnx
from hvlm_export.registry import REGISTRY
from hvlm_export.validators.parity import validate
from hvlm_export.validators.reference import load_reference
from hvlm_export.validators.trt_lint import lint_tensorrt

NAMES = [*REGISTRY, "sparse_attention"]
REAL, MEMORY_REAL = [41, 17, 1], [11, 3, 6]


def _mask(lengths: list[int]) -> np.ndarray:
    return (np.arange(max(lengths))[None] < np.array(lengths)[:, None]).astype(np.int64)


@pytest.mark.parametrize("name", NAMES)
def test_masked_graph_matches_each_unpadded_sample(exported, name):
    path = exported(name, with_mask=True)
    reference = load_reference(path)
    memory_input = "memory" in reference.spec.inputs
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, max(REAL), reference.dim)).astype(np.float32)
    feed = {"x": x, "attention_mask": _mask(REAL)}
    if memory_input:
        feed["memory"] = rng.standard_normal((3, max(MEMORY_REAL), reference.dim)).astype(np.float32)
        feed["memory_mask"] = _mask(MEMORY_REAL)
    y = runtime.load(path).run(feed)["y"]
    for i, n in enumerate(REAL):
        alone = [torch.from_numpy(x[i : i + 1, :n])]
        if memory_input:
            alone.append(torch.from_numpy(feed["memory"][i : i + 1, : MEMORY_REAL[i]]))
        with torch.no_grad():
            want = reference.module(*alone).numpy()
        err = np.abs(y[i : i + 1, :n] - want).max() / np.abs(want).max()
        assert err < 1e-4, f"{name} sample {i}: {err:.3g}"
        assert not y[i, n:].any(), f"{name} sample {i}: padded positions are not 0"


@pytest.mark.parametrize("name", ["cross_memory", "mamba"])
def test_masks_are_int64_inputs_with_dynamic_axes(exported, name):
    path = exported(name, with_mask=True)
    graph = onnx.load(path, load_external_data=False).graph
    inputs = {i.name: i.type.tensor_type for i in graph.input}
    masks = ["attention_mask", "memory_mask"] if name == "cross_memory" else ["attention_mask"]
    assert list(inputs) == (["x", "memory"] if name == "cross_memory" else ["x"]) + masks
    for mask, axis in zip(masks, ["seq", "mem_seq"], strict=False):
        assert inputs[mask].elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in inputs[mask].shape.dim] == ["batch", axis]
    assert set(masks) <= set(read_metadata(path)["input_shapes"])
    assert not [f for f in lint_tensorrt(path) if f.severity == "error"]


@pytest.mark.parametrize("name", ["strided", "cross_memory", "performer"])
def test_masked_export_validates_on_padded_batches(exported, name):
    report = validate(exported(name, with_mask=True))
    assert report, report.summary()
    assert any(c.shape["attention_mask"][0] == 3 for c in report.cases)


def test_fp16_masked_export_runs_and_validates(exported):
    assert validate(exported("local_global", "fp16", with_mask=True))


def test_what_cannot_take_a_mask_says_so(tmp_path):
    with pytest.raises(ExportError, match="for forward graphs"):
        export_onnx("mamba", tmp_path / "m.onnx", model_kwargs=REGISTRY["mamba"].small, mode="step", with_mask=True)
    with pytest.raises(ExportError, match="your own module"):
        export_onnx("torch.nn:Identity", tmp_path / "u.onnx", example_shapes=["input=B,L,8"], with_mask=True)
    assert not list(tmp_path.iterdir())
