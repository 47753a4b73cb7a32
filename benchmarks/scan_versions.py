"""The CUDA selective scan against an earlier version of hvlm_export/ops/selective_scan_triton.py, on a GPU.

For each dtype and length (B = 1, D = 1536, N = 16, with z, D, delta_bias and softplus, as
MambaLayer calls it): the device time of one call of each version (the call captured in a CUDA
graph, the replay timed by ``triton.testing.do_bench``; the two versions alternate, three rounds,
median), the current version through ``torch.ops.hvlm.selective_scan`` (eager launches, host cost
included), and the error of each version against the float64 sequential loop (lengths up to 16K).
Lengths that are not a multiple of the kernel's chunk take its masked form.

    git show 8a3b2ba:hvlm_export/ops/selective_scan_triton.py > scan_old.py
    python benchmarks/scan_versions.py --baseline scan_old.py [--lengths 8000 8192 65536] [--dtypes fp32 fp16]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scan_tuning import DTYPES, bench, error, graph_ms, inputs  # noqa: E402
from hvlm_export.ops import selective_scan_triton as current  # noqa: E402


def load(path: Path):
    spec = importlib.util.spec_from_file_location("scan_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(baseline, dtype: str, length: int, rounds: int = 3) -> dict:
    inp = inputs(length, dtype=DTYPES[dtype])
    calls = {"before": functools.partial(baseline.selective_scan_triton, **inp, delta_softplus=True),
             "after": functools.partial(current.selective_scan_triton, **inp, delta_softplus=True)}
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(graph_ms(call))
    op = bench(lambda: torch.ops.hvlm.selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"],
                                                     inp["z"], inp["delta_bias"], True))
    row = {"dtype": dtype, "L": length, **{f"{k}_ms": statistics.median(v) for k, v in times.items()}, "op_ms": op}
    if length <= 16384:
        row["err_before"] = error(length, 1536, 16, dtype, baseline.selective_scan_triton)
        row["err_after"] = error(length, 1536, 16, dtype, current.selective_scan_triton)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="an earlier selective_scan_triton.py")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8000, 8192, 65536])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    args = parser.parse_args()
    import hvlm_export.ops  # noqa: F401  (registers torch.ops.hvlm)

    baseline = load(args.baseline)
    rows = [compare(baseline, dtype, length) for dtype in args.dtypes for length in args.lengths]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| dtype | L | GPU ms before | GPU ms after | after / before | op ms (eager) | rel err before / after |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        err = f"{r['err_before']:.1e} / {r['err_after']:.1e}" if "err_after" in r else "-"
        print(f"| {r['dtype']} | {r['L']} | {r['before_ms']:.4f} | {r['after_ms']:.4f} | "
              f"{r['after_ms'] / r['before_ms']:.3f} | {r['op_ms']:.4f} | {err} |")


if __name__ == "__main__":
    main()
