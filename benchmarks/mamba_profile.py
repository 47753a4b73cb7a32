"""Where MambaLayer's time goes on a GPU: per-kernel CUDA time of one forward (torch.profiler),
eager and compiled, fp16, B=1, dim 768, against wall time (CUDA events, median).

Usage: python benchmarks/mamba_profile.py [--lengths 8192 32768] [--dim 768]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton.testing
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.modules import MambaLayer, cast_module  # noqa: E402


def kernel_table(fn, top=12):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = sorted(((e.key, e.device_time_total / 1e3, e.count) for e in prof.key_averages() if e.device_time_total > 0),
                  key=lambda r: -r[1])
    busy = sum(r[1] for r in rows)
    return busy, rows[:top]


def host_us(fn, calls=200):
    """Host time per call in microseconds at a size where the GPU work is negligible."""
    import time

    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host


def launch_overheads(layer, compiled, dim):
    from hvlm_export.ops.selective_scan_triton import selective_scan_triton

    x = torch.randn(1, 16, dim, device="cuda", dtype=torch.float16)
    d, n = layer.d_inner, layer.state_size
    u = torch.randn(1, d, 16, device="cuda", dtype=torch.float16)
    bc = torch.randn(1, n, 16, device="cuda", dtype=torch.float16)
    a, ones = -torch.rand(d, n, device="cuda"), torch.ones(d, device="cuda")
    w = layer.conv1d.weight
    print("\nhost time per call at L=16 (microseconds):")
    for name, fn in (("selective_scan_triton", lambda: selective_scan_triton(u, u, a, bc, bc, ones, u, ones, True)),
                     ("torch.ops.hvlm.selective_scan", lambda: torch.ops.hvlm.selective_scan(u, u, a, bc, bc, ones, u,
                                                                                              ones, True)),
                     ("torch.ops.hvlm.causal_conv1d_silu", lambda: torch.ops.hvlm.causal_conv1d_silu(
                         x.new_empty(1, 16, d), w, layer.conv1d.bias)),
                     ("MambaLayer eager", lambda: layer(x)), ("MambaLayer compiled", lambda: compiled(x))):
        print(f"  {host_us(fn):8.1f}  {name}")


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    torch.manual_seed(0)
    layer = cast_module(MambaLayer(dim=args.dim), torch.float16).cuda().eval()
    compiled = torch.compile(layer, dynamic=True)
    launch_overheads(layer, compiled, args.dim)
    for length in args.lengths:
        x = torch.randn(1, length, args.dim, device="cuda", dtype=torch.float16)
        for mode, fn in (("eager", layer), ("compiled", compiled)):
            wall = triton.testing.do_bench(lambda fn=fn, x=x: fn(x), warmup=10, rep=100, return_mode="median")
            busy, rows = kernel_table(lambda fn=fn, x=x: fn(x))
            print(f"\nL={length} {mode}: wall {wall:.3f} ms, GPU busy {busy:.3f} ms")
            for name, ms, count in rows:
                print(f"  {ms:8.3f} ms  x{count:<3} {name[:110]}")


if __name__ == "__main__":
    main()
