"""The benchmark machinery (not the numbers): cases come from the registry, ratios are taken
against the dense module of the same run, files are written, bad requests are typed errors."""

from __future__ import annotations

import json

import pytest
import torch

from hvlm_export import bench
from hvlm_export.errors import BenchError
from hvlm_export.registry import REGISTRY


def test_live_bytes_sees_a_known_allocation():
    with bench.LiveBytes() as tracker:
        a = torch.ones(1 << 18)  # 1 MiB of float32
        b = a * 2
        del a, b
    assert tracker.peak >= 2 * (1 << 20), tracker.peak
    assert tracker.live == 0, "freed tensors must leave the live count"


def test_cases_are_the_registry_benchmark_cases():
    names = bench.case_names()
    for spec in REGISTRY.values():
        assert spec.bench, f"{spec.name} has no benchmark case"
        assert set(spec.bench) <= set(names)
    assert bench.BASELINE in names and {"performer", "performer_causal", "strided_causal"} <= set(names)


def test_scaling_suite_writes_results_with_ratios(tmp_path, monkeypatch):
    # the benchmark size is dim 768; shrink the registry defaults' width for a fast CPU run
    small = {n: s.__class__(**{**s.__dict__, "defaults": {**s.defaults, **s.small}}) for n, s in REGISTRY.items()}
    monkeypatch.setattr(bench, "REGISTRY", small)
    names = ["strided", "scan_op", "scan_naive"]
    records = bench.run_scaling("cpu", "fp32", [16, 40], names, repeats=1)
    got = {(r.name, r.length) for r in records}
    assert got == {(n, L) for n in [*names, bench.BASELINE] for L in (16, 40)}, "the baseline is always measured"
    assert all(r.ms and r.ms > 0 and r.peak_mib is not None for r in records)
    assert all(r.host_ms is None and r.gpu_ms is None for r in records), "the host / GPU split is CUDA only"
    by = {(r.name, r.length): r for r in records}
    for L in (16, 40):
        assert by[("strided", L)].ratio == pytest.approx(by[("strided", L)].ms / by[(bench.BASELINE, L)].ms)
        assert by[(bench.BASELINE, L)].ratio == pytest.approx(1.0) and by[("scan_op", L)].ratio is None
    paths = bench.write_results(records, tmp_path, "scaling-cpu-fp32", "test")
    data = json.loads(paths[0].read_text())
    assert data["meta"]["command"] == "test" and len(data["results"]) == 8
    table = paths[1].read_text()
    assert "| strided | eager |" in table and "x) /" in table
    assert "Host and GPU time" not in table
    assert [p.name for p in paths[2:]] == [f"scaling-cpu-fp32-{k}.png" for k in ("latency", "memory", "ratio")]
    assert all(p.stat().st_size > 1000 for p in paths[2:])



def test_several_runs_give_medians_and_each_runs_ratio(tmp_path, monkeypatch):
    """--runs 3: one record per case and length; its ratio is the median of the three runs'
    ratios (each taken within one run), all three kept; the table gives the range."""
    small = {n: s.__class__(**{**s.__dict__, "defaults": {**s.defaults, **s.small}}) for n, s in REGISTRY.items()}
    monkeypatch.setattr(bench, "REGISTRY", small)
    times = iter([4.0, 2.0, 9.0, 3.0, 1.0, 2.0])  # (strided, dense) of runs 1-3: ratios 2.0, 3.0, 0.5
    monkeypatch.setattr(bench, "_time", lambda *a, **k: next(times))
    records = bench.run_scaling("cpu", "fp32", [16], ["strided"], repeats=1, runs=3)
    by = {r.name: r for r in records}
    assert len(records) == 2 and by["strided"].ratios == [2.0, 3.0, 0.5]
    assert by["strided"].ratio == 2.0 and by["strided"].ms == 4.0 and by[bench.BASELINE].ms == 2.0
    table = bench.write_results(records, tmp_path, "s", "test")[1].read_text()
    assert "(2.00x, 0.50-3.00)" in table and "median of 3 runs" in table
    with pytest.raises(BenchError, match="runs must be a positive int"):
        bench.run_scaling("cpu", "fp32", [16], ["strided"], repeats=1, runs=0)


def test_fuse_builds_every_attention_module_with_fused_projections():
    modules = {name: make() for name, make in bench._module_cases("cpu", torch.float32, fuse=True).items()}
    for name, model in modules.items():
        layers = [m for m in model.modules() if hasattr(m, "fuse_projections")]
        assert all(m._fused_qkv is not None for m in layers), name
        assert bool(layers) == (not name.startswith(("mamba", "linear_block"))), name
    assert all(m._fused_qkv is None for make in bench._module_cases("cpu", torch.float32).values()
               for m in make().modules() if hasattr(m, "fuse_projections"))


@pytest.mark.parametrize("kwargs, match", [
    ({"names": ["bogus"]}, "unknown benchmark case"),
    ({"names": ["strided"], "modes": ["jit"]}, "unknown mode"),
    ({"names": ["strided"], "modes": ["cudagraphs"]}, "needs --device cuda"),
])
def test_bad_requests_are_typed_errors(kwargs, match):
    with pytest.raises(BenchError, match=match):
        bench.run_scaling("cpu", "fp32", [16], repeats=1, **kwargs)


def test_unwritable_output_is_refused_before_measuring(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BenchError, match="cannot create the output directory"):
        bench.check_output_dir(blocker / "sub")


def test_onnx_suite_measures_one_mechanism():
    (row,) = bench.run_onnx(["cross_memory"], dim=32, length=24, repeats=1)
    assert row["nodes"] > 0 and row["eager_ms"] > 0 and row["ort_ms"] > 0
    with pytest.raises(BenchError, match="unknown mechanism"):
        bench.run_onnx(["bogus"])


def test_markdown_gives_the_host_and_gpu_split_where_measured():
    from hvlm_export.bench_report import markdown

    base = {"device": "cuda", "dtype": "fp16", "peak_mib": 1.0, "status": "ok", "ratio": 1.0}
    rows = [{**base, "name": "strided", "mode": "eager", "length": 8192, "ms": 0.33, "host_ms": 0.196, "gpu_ms": 0.218},
            {**base, "name": "strided", "mode": "eager", "length": 32768, "ms": 2.3, "host_ms": 0.286, "gpu_ms": None},
            {**base, "name": "strided", "mode": "compiled", "length": 8192, "ms": 0.4, "host_ms": 0.25, "gpu_ms": 0.2},
            {**base, "name": "strided", "mode": "cudagraphs", "length": 8192, "ms": 0.3, "host_ms": None, "gpu_ms": None}]
    table = markdown(rows, {"command": "c", "machine": "m", "date": "d"})
    assert "| strided | eager | 0.196 / 0.218 | 0.286 / - |" in table, table
    assert "| strided | compiled | 0.25 / 0.2 | - |" in table, table
    assert table.split("Host and GPU time")[1].count("| strided |") == 2, "unmeasured rows have no split"


def test_plots_draw_each_series_in_order_of_length(tmp_path, monkeypatch):
    """Merged runs (benchmarks/break_even.py) list 8K, 32K, then 2K, 64K: a line must still
    run from the shortest length to the longest, not zigzag."""
    import matplotlib.axes

    from hvlm_export.bench_report import plots

    drawn = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda ax, *a, **k: (drawn.append(list(a[0])), real(ax, *a, **k))[1])
    base = {"name": "strided", "mode": "eager", "peak_mib": 1.0, "ratio": 0.5}
    rows = [{**base, "length": L, "ms": L / 1000} for L in (8192, 32768, 2048, 65536)]
    assert len(plots(rows, tmp_path, "merged")) == 3
    assert drawn and all(xs == [2048, 8192, 32768, 65536] for xs in drawn), drawn
