"""The benchmark machinery (not the numbers): cases run, memory is tracked, files are written."""

from __future__ import annotations

import json

import torch

from hvlm_export import bench


def test_live_bytes_sees_a_known_allocation():
    with bench.LiveBytes() as tracker:
        a = torch.ones(1 << 18)  # 1 MiB of float32
        b = a * 2
        del a, b
    assert tracker.peak >= 2 * (1 << 20), tracker.peak
    assert tracker.live == 0, "freed tensors must leave the live count"


def test_scaling_suite_writes_results(tmp_path):
    records = bench.run_scaling("cpu", "fp32", [16, 40], ["strided", "dense_sdpa", "scan_op", "scan_naive"], repeats=1)
    assert {(r.name, r.length) for r in records} == {(n, L) for n in ("strided", "dense_sdpa", "scan_op", "scan_naive")
                                                      for L in (16, 40)}
    assert all(r.ms and r.ms > 0 and r.peak_mib is not None for r in records)
    paths = bench.write_results(records, tmp_path, "scaling-cpu-fp32", "test")
    data = json.loads(paths[0].read_text())
    assert data["meta"]["command"] == "test" and len(data["results"]) == 8
    assert "| strided |" in paths[1].read_text()
    assert all(p.stat().st_size > 1000 for p in paths[2:]) and len(paths) == 4


def test_onnx_suite_measures_one_mechanism():
    (row,) = bench.run_onnx(["cross_memory"], dim=32, length=24, repeats=1)
    assert row["nodes"] > 0 and row["eager_ms"] > 0 and row["ort_ms"] > 0
