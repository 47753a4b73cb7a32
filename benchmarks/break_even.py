"""Merge ``hvlm-export bench`` scaling results (JSON files of the same device, e.g. runs at
different lengths) into one table and plots, and give each mechanism's break-even length
against the dense module.

Break-even: per length, the least ratio over the modes (eager and compiled; with
``--with-cudagraphs`` CUDA graphs too), interpolated log-log between neighbouring measured
lengths; "below X" means the mechanism is already faster at the shortest measured length,
"above X" slower at the longest.

Usage:
    python benchmarks/break_even.py RUN1.json RUN2.json --out DIR [--stem scaling-cuda-fp16]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.bench import BASELINE, EXTRA_CASES  # noqa: E402
from hvlm_export.bench_report import markdown, plots  # noqa: E402


def best_ratios(rows: list[dict], modes: set[str]) -> dict[str, dict[int, tuple[float, str]]]:
    """name -> length -> (least ratio over ``modes``, its mode)."""
    best: dict[str, dict[int, tuple[float, str]]] = {}
    for r in rows:
        if r["name"] in (BASELINE, *EXTRA_CASES) or r.get("ratio") is None or r.get("mode", "eager") not in modes:
            continue
        cell = best.setdefault(r["name"], {})
        if r["length"] not in cell or r["ratio"] < cell[r["length"]][0]:
            cell[r["length"]] = (r["ratio"], r.get("mode", "eager"))
    return best


def crossing(points: list[tuple[int, float]]) -> str:
    """The length where the ratio crosses 1 (log-log interpolation between measured lengths)."""
    points = sorted(points)
    if points[0][1] <= 1.0:
        return f"below {points[0][0]}"
    for (l0, r0), (l1, r1) in zip(points, points[1:], strict=False):
        if r1 <= 1.0:
            t = math.log(r0) / (math.log(r0) - math.log(r1))
            return f"{round(math.exp(math.log(l0) + t * (math.log(l1) - math.log(l0))), -2):.0f}"
    return f"above {points[-1][0]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+", help="scaling JSON files of one device and dtype")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stem", default="scaling-cuda-fp16")
    p.add_argument("--with-cudagraphs", action="store_true", help="count CUDA graphs among the modes")
    args = p.parse_args()
    docs = [json.loads(path.read_text()) for path in args.results]
    rows = [r for doc in docs for r in doc["results"]]
    if len({(r["name"], r.get("mode", "eager"), r["length"]) for r in rows}) != len(rows):
        sys.exit("the files measure the same case, mode and length twice: give runs at different lengths")
    meta = {**docs[0]["meta"], "command": " + ".join(d["meta"]["command"] for d in docs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    (args.out / f"{args.stem}.md").write_text(markdown(rows, meta))
    plots(rows, args.out, args.stem)
    modes = {"eager", "compiled"} | ({"cudagraphs"} if args.with_cudagraphs else set())
    lengths = sorted({r["length"] for r in rows})
    print("| mechanism | " + " | ".join(f"best ratio L={L}" for L in lengths) + " | dense faster below |")
    print("|---|" + "---|" * (len(lengths) + 1))
    for name, cell in best_ratios(rows, modes).items():
        ratios = " | ".join(f"{cell[L][0]:.2f} ({cell[L][1]})" if L in cell else "-" for L in lengths)
        print(f"| {name} | {ratios} | {crossing([(L, v[0]) for L, v in cell.items()])} |")


if __name__ == "__main__":
    main()
