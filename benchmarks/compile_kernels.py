"""Eager against torch.compile(dynamic=True), kernel by kernel, on a GPU: per registry benchmark
case and length, the time per call back to back (synchronised after 20 calls), the GPU time per
call and the kernels one call launches (torch.profiler over 5 calls), and the top kernels.

    python benchmarks/compile_kernels.py --names strided local_global performer mamba cross_memory
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.bench import _module_cases  # noqa: E402


def measure(fn, x: torch.Tensor, top: int = 7) -> str:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            fn(x)
        torch.cuda.synchronize()
        per_call = (time.perf_counter() - start) / 20 * 1e3
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fn(x)
            torch.cuda.synchronize()
    kernels = collections.defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name][0] += 1
            kernels[event.name][1] += event.device_time_total
    gpu = sum(v[1] for v in kernels.values()) / 5 / 1e3
    count = sum(v[0] for v in kernels.values()) / 5
    lines = [f"{per_call:.3f} ms per call back to back, GPU {gpu:.3f} ms, {count:.0f} kernels per call"]
    for name, (n, us) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]:
        lines.append(f"    {us / 5 / 1e3:7.3f} ms  x{n // 5}  {name[:110]}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", nargs="+", default=["strided", "local_global", "performer", "mamba", "cross_memory"])
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 8192])
    args = p.parse_args()
    cases = _module_cases("cuda", torch.float16)
    for name in args.names:
        for length in args.lengths:
            x = torch.randn(1, length, 768, device="cuda", dtype=torch.float16)
            model = cases[name]()
            for mode, fn in (("eager", model), ("compiled", torch.compile(model, dynamic=True))):
                print(f"{name} L={length} {mode}: {measure(fn, x)}", flush=True)
            torch._dynamo.reset()


if __name__ == "__main__":
    main()
