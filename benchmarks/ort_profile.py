"""Where ONNX Runtime spends its time on an exported mechanism: time per op type (CPU, fp32).

Exports a registry mechanism, runs it with ONNX Runtime's session profiler on, and prints the
kernel time summed per op type (nodes inside function bodies count as their own op types),
averaged over the profiled runs, next to the session's wall time and the eager module's.

``--scan-kernel`` (Mamba models) also times the session with the onnxruntime-extensions kernel
for SelectiveScan (``runtime.load(..., scan_kernel=True)``): once with the numba scan, once with
a kernel that returns zeros, each with the time spent inside the Python function; what is left
is the op boundary of onnxruntime-extensions (its conversion of inputs and outputs).

Usage: python benchmarks/ort_profile.py mamba [--dim 256] [--length 2048] [--runs 5] [--threads 2] [--scan-kernel]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from hvlm_export.exporters.onnx_export import export_onnx
from hvlm_export.registry import REGISTRY
from hvlm_export.validators.reference import load_reference


def median_ms(fn, runs: int) -> float:
    """Median milliseconds of ``fn()`` over ``runs`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def scan_kernel_boundary(path: Path, x: np.ndarray, runs: int) -> None:
    """The session with the SelectiveScan PyOp: numba kernel, then a zeros kernel."""
    from hvlm_export import runtime
    from hvlm_export.runtime import ort_scan_kernel

    real, inside = ort_scan_kernel.selective_scan_fast, []

    def timed(kernel):
        def run(*args):
            t0 = time.perf_counter()
            out = kernel(*args)
            inside.append((time.perf_counter() - t0) * 1e3)
            return out
        return run

    zeros = lambda u, *rest: (np.zeros_like(u), np.zeros_like(rest[6]))  # noqa: E731 (y, last_state)
    session = runtime.load(path, providers=["CPUExecutionProvider"], scan_kernel=True)
    try:
        for name, kernel in (("numba scan", real), ("zeros", zeros)):
            ort_scan_kernel.selective_scan_fast = timed(kernel)
            wall = median_ms(lambda: session.run({"x": x}), runs)
            print(f"with the PyOp ({name}): {wall:.1f} ms per run, {statistics.median(inside[-runs:]):.1f} ms "
                  f"inside the kernel function")
    finally:
        ort_scan_kernel.selective_scan_fast = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(REGISTRY))
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scan-kernel", action="store_true", help="also time the SelectiveScan PyOp (Mamba models)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kwargs = {"dim": args.dim, **({"num_heads": 8} if "num_heads" in REGISTRY[args.name].defaults else {})}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(args.name, Path(tmp) / f"{args.name}.onnx", model_kwargs=kwargs)
        module = load_reference(path).module
        x = np.random.default_rng(0).standard_normal((1, args.length, args.dim), dtype=np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.log_severity_level = args.threads, 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            eager = median_ms(lambda: module(torch.from_numpy(x)), args.runs)
        wall = median_ms(lambda: session.run(None, {"x": x}), args.runs)
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "profile")
        profiled = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        profiled.run(None, {"x": x})  # warm-up, also profiled: dropped below
        for _ in range(args.runs):
            profiled.run(None, {"x": x})
        events = json.loads(Path(profiled.end_profiling()).read_text())
        if args.scan_kernel:
            scan_kernel_boundary(path, x, args.runs)
    per_op: collections.Counter[str] = collections.Counter()
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    first_end = runs[0]["ts"] + runs[0]["dur"] if runs else 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_end:
            per_op[e["args"].get("op_name", "?")] += e["dur"] / 1e3 / args.runs
    print(f"{args.name}, dim {args.dim}, L {args.length}, {args.threads} threads: eager {eager:.1f} ms, "
          f"ONNX Runtime {wall:.1f} ms ({wall / eager:.2f}x); kernel time per op type (ms per run, profiled):")
    for op, ms in per_op.most_common(12):
        print(f"  {op:24} {ms:8.2f}")
    print(f"  {'(all kernels)':24} {sum(per_op.values()):8.2f}")


if __name__ == "__main__":
    main()
