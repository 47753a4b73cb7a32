"""Eager vs torch.compile (static and dynamic shapes) where host time matters: for each case
and length, the host time per call (enqueueing, median of 7 loops of 100 calls) and the wall
time per call of the same loops (after a synchronize: GPU time when the GPU is the bottleneck,
host time when the host is). CUDA, fp16, B = 1. ``--no-direct`` also times the eager layers
with the fused kernels reached through their ops (torch.ops.hvlm.*) instead of direct launches,
which is what the ops' dispatch costs.

    python benchmarks/compile_modes.py --names strided local_global performer mamba cross_memory --lengths 1024 8192
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.bench import _module_cases  # noqa: E402


def host_and_wall(fn, calls: int = 100, loops: int = 7) -> tuple[float, float]:
    """Median (host ms per call, wall ms per call) over ``loops`` loops of ``calls`` calls."""
    host, wall = [], []
    for _ in range(loops):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        host.append((t1 - t0) * 1e3 / calls)
        wall.append((t2 - t0) * 1e3 / calls)
    return statistics.median(host), statistics.median(wall)


@contextlib.contextmanager
def through_the_ops():
    """Eager calls take the custom ops instead of launching the kernels directly."""
    # import_module: ``import hvlm_export.ops.selective_scan as m`` would bind the function the
    # package exports under that name
    modules = [importlib.import_module(f"hvlm_export.ops.{name}")
               for name in ("causal_conv", "favor", "selective_scan", "sparse_attention")]
    saved = [(m, m.direct_launch_ok) for m in modules]
    for module, _ in saved:
        module.direct_launch_ok = lambda: False
    try:
        yield
    finally:
        for module, fn in saved:
            module.direct_launch_ok = fn


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--names", nargs="+", required=True)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--no-direct", action="store_true", help="also time eager calls through the ops")
    args = p.parse_args()
    cases = _module_cases("cuda", torch.float16)
    modes = ["eager"] + (["eager via ops"] if args.no_direct else []) + ["compiled static", "compiled dynamic"]
    rows = []
    for name in args.names:
        model = cases[name]()
        static, dynamic = torch.compile(model, dynamic=False), torch.compile(model, dynamic=True)
        for length in args.lengths:
            x = torch.randn(1, length, model.dim, device="cuda", dtype=torch.float16)
            ms = {"eager": host_and_wall(functools.partial(model, x))}
            if args.no_direct:
                with through_the_ops():
                    ms["eager via ops"] = host_and_wall(functools.partial(model, x))
            ms["compiled static"] = host_and_wall(functools.partial(static, x))
            ms["compiled dynamic"] = host_and_wall(functools.partial(dynamic, x))
            rows.append((name, length, ms))
            print(name, length, {k: f"{h:.3f}/{w:.3f}" for k, (h, w) in ms.items()}, flush=True)
    print(f"\nhost / wall ms per call, fp16, B = 1, {torch.cuda.get_device_name()} (torch {torch.__version__})")
    print("| case | L | " + " | ".join(modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    for name, length, ms in rows:
        print(f"| {name} | {length} | " + " | ".join("%.3f / %.3f" % ms[m] for m in modes) + " |")


if __name__ == "__main__":
    main()
