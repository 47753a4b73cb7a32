"""``hvlm-export bench`` on a GPU: the host / device split of eager calls.

Run on a GPU machine: ``pytest -m gpu tests/gpu``. Skipped (with the reason) without CUDA.
"""

from __future__ import annotations

import pytest
import torch

from hvlm_export import bench

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


def test_eager_cuda_calls_are_split_into_host_and_gpu_time(tmp_path):
    records = bench.run_scaling("cuda", "fp16", [2048], ["strided", "dense_sdpa"], repeats=3)
    by = {r.name: r for r in records}
    for name in ("strided", "dense_sdpa", bench.BASELINE):
        r = by[name]
        assert r.host_ms and r.host_ms > 0 and r.gpu_ms and r.gpu_ms > 0, r
        # the call's kernels alone, without the host's gaps: never longer than the call
        assert r.gpu_ms <= 1.5 * r.ms + 0.05, r
    table = bench.write_results(records, tmp_path, "split", "test")[1].read_text()
    assert "Host and GPU time per eager call" in table and "| strided | " in table


def test_split_is_eager_only():
    records = bench.run_scaling("cuda", "fp16", [1024], ["strided"], repeats=2, modes=["compiled"])
    assert all(r.host_ms is None and r.gpu_ms is None for r in records)
