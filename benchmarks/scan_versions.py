"""The CUDA selective scan against other versions of hvlm_export/ops/selective_scan_triton.py, on a GPU.

For each dtype and length (B = 1, D = 1536, N = 16, with z, D, delta_bias and softplus, as
MambaLayer calls it): the device time of one call of each version (the call captured in a CUDA
graph, the replay timed by ``triton.testing.do_bench``; the versions alternate, ``--rounds``
rounds, median), the current version through ``torch.ops.hvlm.selective_scan`` (eager launches,
host cost included), and the error of each version against the float64 sequential loop
(lengths up to 16K). Lengths that are not a multiple of the kernel's chunk take its masked form.
The other versions are files: an earlier commit's, or a variant (a patch applied to one).

    git show 8a3b2ba:hvlm_export/ops/selective_scan_triton.py > scan_old.py
    python benchmarks/scan_versions.py --baseline scan_old.py [more files] [--lengths 8000 8192 65536] [--dtypes fp32 fp16]
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
    spec = importlib.util.spec_from_file_location(f"scan_baseline_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(versions: dict, dtype: str, length: int, rounds: int) -> dict:
    """``versions``: name -> module with ``selective_scan_triton``; 'current' is this checkout's."""
    inp = inputs(length, dtype=DTYPES[dtype])
    times = {name: [] for name in versions}
    for _ in range(rounds):
        for name, module in versions.items():
            times[name].append(graph_ms(functools.partial(module.selective_scan_triton, **inp, delta_softplus=True)))
    op = bench(lambda: torch.ops.hvlm.selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"],
                                                     inp["z"], inp["delta_bias"], True))
    row = {"dtype": dtype, "L": length, "ms": {k: statistics.median(v) for k, v in times.items()}, "op_ms": op}
    if length <= 16384:
        row["err"] = {k: error(length, 1536, 16, dtype, m.selective_scan_triton) for k, m in versions.items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, nargs="+", required=True,
                        help="other selective_scan_triton.py files (an earlier commit's, a variant)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8000, 8192, 65536])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import hvlm_export.ops  # noqa: F401  (registers torch.ops.hvlm)

    versions = {path.stem: load(path) for path in args.baseline}
    versions["current"] = current
    rows = [compare(versions, dtype, length, args.rounds) for dtype in args.dtypes for length in args.lengths]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; GPU ms per call (median of {args.rounds}), "
          "ratio to current, relative error against the float64 loop")
    names = list(versions)
    print("| dtype | L | " + " | ".join(names) + " | current through the op (eager) |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for r in rows:
        cells = []
        for name in names:
            cell = f"{r['ms'][name]:.4f}"
            if name != "current":
                cell += f" ({r['ms'][name] / r['ms']['current']:.3f}x)"
            if "err" in r:
                cell += f", {r['err'][name]:.1e}"
            cells.append(cell)
        print(f"| {r['dtype']} | {r['L']} | " + " | ".join(cells) + f" | {r['op_ms']:.4f} |")


if __name__ == "__main__":
    main()
