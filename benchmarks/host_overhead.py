"""Where a layer's per-call latency goes on the GPU machine: host time against GPU time.

For each case (registry bench cases, fp16, B = 1) at each length, four times per call, in ms:

- ``synced``: CUDA events around one call, synchronised after each (``hvlm-export bench``'s
  timing, median of 30: the latency of one call that starts on an idle GPU);
- ``queued``: CUDA events around 50 calls enqueued back to back (the time per call of a layer
  inside a model, where the host runs ahead of the GPU as long as the GPU is the slower);
- ``host``: the host's enqueue time per call in the same loop;
- ``gpu``: one call captured in a CUDA graph and replayed (device time without the host);

and the number of kernels one call launches (torch.profiler). ``--cprofile DIR`` also writes each
case's Python profile (cProfile, 300 calls at the first length, top functions by own time), and
``--micro`` times the host cost of single launches (an aten op, a Triton kernel through its JIT
and through its compiled handle); ``--compiled`` adds each case under ``torch.compile(model,
dynamic=False)``, as the bench's ``compiled`` mode runs it.

    python benchmarks/host_overhead.py --names cross_memory strided performer --lengths 8192
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.bench import _module_cases, _time  # noqa: E402


def queued_and_host_ms(fn, calls: int = 50, loops: int = 7) -> tuple[float, float]:
    queued, host = [], []
    for _ in range(loops):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        host.append((time.perf_counter() - t0) * 1e3 / calls)
        torch.cuda.synchronize()
        queued.append(start.elapsed_time(end) / calls)
    return statistics.median(queued), statistics.median(host)


def graph_ms(fn, replays: int = 20) -> float:
    """Device time of one call: capture it once, time replays back to back."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def kernel_count(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")


def python_profile(fn, calls: int = 300, top: int = 25) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def micro() -> None:
    """Host microseconds per launch of single operations (no synchronisation in the loop)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)

    x = torch.randn(4096, device="cuda", dtype=torch.float16)
    y, w = torch.empty_like(x), torch.randn(64, 64, device="cuda", dtype=torch.float16)
    compiled = _copy[(4,)](x, y, x.numel(), BLOCK=1024)
    runner = compiled[(4, 1, 1)]
    cases = {
        "x.view(64, 64)": lambda: x.view(64, 64),
        "torch.empty_like": lambda: torch.empty_like(x),
        "F.linear 64x64": lambda: torch.nn.functional.linear(w, w),
        "triton JIT launch": lambda: _copy[(4,)](x, y, x.numel(), BLOCK=1024),
        "triton compiled handle": lambda: runner(x, y, x.numel(), 1024),
    }
    print("\nhost microseconds per launch (median of 7 loops of 1000):")
    for name, fn in cases.items():
        per = []
        for _ in range(7):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(1000):
                fn()
            per.append((time.perf_counter() - t0) * 1e3)
            torch.cuda.synchronize()
        print(f"  {statistics.median(per):8.2f}  {name}", flush=True)


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", nargs="+", required=True)
    p.add_argument("--lengths", type=int, nargs="+", default=[8192])
    p.add_argument("--cprofile", type=Path, help="write each case's Python profile under this folder")
    p.add_argument("--micro", action="store_true", help="also time single launches")
    p.add_argument("--fuse-projections", action="store_true", help="q / k / v in one GEMM (fuse_projections)")
    p.add_argument("--compiled", action="store_true",
                   help="also each case under torch.compile(model, dynamic=False) (the bench's 'compiled')")
    args = p.parse_args()
    if args.micro:
        micro()
    cases = _module_cases("cuda", torch.float16, fuse=args.fuse_projections)
    rows = []
    for name in args.names:
        model = cases[name]()
        variants = {name: model} | ({f"{name} compiled": torch.compile(model, dynamic=False)} if args.compiled else {})
        for label, call in variants.items():
            for i, length in enumerate(args.lengths):
                x = torch.randn(1, length, model.dim, device="cuda", dtype=torch.float16)
                fn = functools.partial(call, x)
                for _ in range(5):
                    fn()
                queued, host = queued_and_host_ms(fn)
                row = (label, length, _time(fn, "cuda", 30), queued, host, graph_ms(fn), kernel_count(fn))
                rows.append(row)
                print(*row, flush=True)
                if args.cprofile and i == 0:
                    args.cprofile.mkdir(parents=True, exist_ok=True)
                    (args.cprofile / f"{label.replace(' ', '-')}-{length}.txt").write_text(python_profile(fn))
    print(f"\nms per call, fp16, B = 1, {torch.cuda.get_device_name()} (torch {torch.__version__})")
    print("| case | L | synced | queued | host | gpu (graph) | kernels |\n|---|---|---|---|---|---|---|")
    for name, length, *t, kernels in rows:
        print(f"| {name} | {length} | " + " | ".join(f"{v:.3f}" for v in t) + f" | {kernels} |")


if __name__ == "__main__":
    main()
