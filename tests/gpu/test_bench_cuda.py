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
    assert "Host and GPU time per call" in table and "| strided | eager | " in table


def test_compiled_modes_are_split_and_specialise_per_length():
    """'compiled' compiles a static graph per length (the dense module's too): strided and
    causal strided share one forward, 2 x 5 graphs, more than Dynamo's default limit of 8 per
    code object, and must not fall back to eager silently (the bench raises the limit and fails
    on a hit). 'compiled-dynamic' serves both of its lengths with one graph."""
    lengths = [64, 80, 96, 112, 128]
    records = bench.run_scaling("cuda", "fp16", lengths, ["strided", "strided_causal"], repeats=2, modes=["compiled"])
    records += bench.run_scaling("cuda", "fp16", [64, 96], ["strided"], repeats=2, modes=["compiled-dynamic"])
    assert len(records) == 3 * 5 + 2 * 2
    assert all(r.ms and r.host_ms and r.gpu_ms for r in records), records
