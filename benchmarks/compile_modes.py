"""Eager vs torch.compile with static shapes vs dynamic shapes, at short lengths (where
launch and guard overhead matter), for the registry's benchmark cases. CUDA, fp16, B = 1.

    python benchmarks/compile_modes.py --names strided strided_causal cross_memory --lengths 2048 8192
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.bench import _module_cases, _time  # noqa: E402


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--names", nargs="+", required=True)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    cases = _module_cases("cuda", torch.float16)
    print("| case | L | eager ms | compiled static ms | compiled dynamic ms |")
    print("|---|---|---|---|---|")
    for name in args.names:
        model = cases[name]()
        variants = {"eager": model, "static": torch.compile(model, dynamic=False),
                    "dynamic": torch.compile(model, dynamic=True)}
        for length in args.lengths:
            x = torch.randn(1, length, model.dim, device="cuda", dtype=torch.float16)
            ms = {k: _time(functools.partial(fn, x), "cuda", args.repeats, warmup=3) for k, fn in variants.items()}
            print(f"| {name} | {length} | {ms['eager']:.3f} | {ms['static']:.3f} | {ms['dynamic']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
