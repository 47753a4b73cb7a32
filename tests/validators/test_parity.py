"""End to end: export every mechanism and config, validate against eager in ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from hvlm_export.errors import ValidationError
from hvlm_export.registry import REGISTRY, Tolerance
from hvlm_export.validators.compare import compare
from hvlm_export.validators.parity import validate
from hvlm_export.artifacts import read_metadata

NAMES = list(REGISTRY)
CONFIGS = ["sparse_attention", "linear_attention"]
# ONNX Runtime's CPU provider has no bfloat16 MatMul/Conv kernels: bf16 exports are checked
# for their graph (tests/exporters) and validated on CUDA / TensorRT, not here.
PRECISIONS_ON_ORT_CPU = ["fp32", "fp16"]


@pytest.mark.parametrize("precision", PRECISIONS_ON_ORT_CPU)
@pytest.mark.parametrize("name", NAMES + CONFIGS)
def test_export_matches_eager(exported, name, precision):
    path = exported(name, precision)
    report = validate(path)
    assert report, report.summary() + "\n" + json.dumps(report.worst())
    export_len = read_metadata(path)["input_shapes"]["x"][1]
    lengths = {c.shape["x"][1] for c in report.cases}
    batches = {c.shape["x"][0] for c in report.cases}
    assert export_len not in lengths and 1 in lengths and len(lengths) >= 4, lengths
    assert batches == {1, 3}
    assert report.backends == ["onnxruntime"] and "tensorrt" in report.skipped


def test_inline_scan_matches_eager(exported):
    report = validate(exported("mamba", scan="inline"))
    assert report, report.summary()


def test_validation_fails_on_a_wrong_graph(exported, tmp_path):
    """The validator can fail: corrupt one weight in the graph and it must say FAILED."""
    src = exported("strided")
    model = onnx.load(src)
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data) or len(t.float_data))
    arr = onnx.numpy_helper.to_array(init).copy()
    arr *= -1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, bad)
    meta = read_metadata(src)
    (tmp_path / meta["weights"]).write_bytes((src.parent / meta["weights"]).read_bytes())
    report = validate(bad)
    failed = [c for c in report.cases if not c.passed]
    assert not report and len(failed) >= len(report.cases) // 2, f"{len(failed)} of {len(report.cases)} failed"
    assert "FAILED" in report.summary()


def test_validate_with_explicit_module(exported):
    from hvlm_export.validators.reference import load_reference

    path = exported("cross_memory")
    module = load_reference(path).module
    assert validate(module, path, shapes=[{"batch": 2, "seq": 9, "mem": 4}])
    with torch.no_grad():
        module.q_proj.bias.add_(1.0)
    assert not validate(module, path, shapes=[{"batch": 2, "seq": 9, "mem": 4}])


def test_tolerance_override_and_json(exported, tmp_path):
    path = exported("performer")
    strict = validate(path, tolerances=Tolerance(0.0, 0.0), shapes=[{"batch": 1, "seq": 40}])
    assert not strict, "zero tolerance must fail on float32 reassociation noise"
    loose = validate(path, tolerances={"y": (1e-3, 1e-3)}, shapes=[{"batch": 1, "seq": 40}])
    assert loose
    data = json.loads(loose.to_json(tmp_path / "r.json").read_text())
    assert data["passed"] and data["cases"][0]["outputs"]["y"]["atol"] == 1e-3
    for key in ("max_abs", "max_rel", "mean_abs", "p99_abs", "cosine", "nan", "inf"):
        assert key in data["cases"][0]["outputs"]["y"]
    with pytest.raises(ValidationError, match="unknown outputs"):
        validate(path, tolerances={"logits": (1, 1)})


def test_bf16_on_cpu_is_reported_not_passed(exported):
    with pytest.raises(ValidationError, match="bfloat16"):
        validate(exported("strided", "bf16"))


def test_static_export_validates_at_its_shape(exported):
    report = validate(exported("strided", dynamic=False, batch=2, seq_len=24))
    assert report and [c.shape["x"] for c in report.cases] == [(2, 24, 64)]


class TestCompare:
    tol = Tolerance(1e-3, 1e-2)

    def test_identical(self):
        a = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
        s = compare(a, a, self.tol)
        assert s and s.max_abs == 0 and s.cosine == pytest.approx(1.0)

    def test_nan_always_fails(self):
        a = np.zeros((3, 3), np.float32)
        b = a.copy()
        b[1, 1] = np.nan
        s = compare(b, a, Tolerance(1e9, 1e9))
        assert not s and s.nan == 1

    def test_inf_fails(self):
        a = np.ones((3,), np.float32)
        b = a.copy()
        b[0] = np.inf
        assert not compare(b, a, Tolerance(1e9, 1e9))

    def test_shape_mismatch(self):
        assert not compare(np.zeros((2, 3)), np.zeros((3, 2)), self.tol)

    def test_rtol_and_required_atol(self):
        e = np.array([100.0, 1.0])
        a = np.array([100.5, 1.0])  # 0.5 abs error, 0.5% relative
        assert compare(a, e, Tolerance(1e-3, 1e-2))
        s = compare(a, e, Tolerance(1e-3, 1e-3))
        assert not s and s.required_atol == pytest.approx(0.4)
        assert s.p99_abs <= s.max_abs and s.max_rel == pytest.approx(0.005)
