"""Check, tune and time the selective scan on a GPU (B=1, D=1536, N=16 unless told).

Every configuration is first checked against the float64 sequential loop (relative error of
y and of the final state), then timed with ``triton.testing.do_bench`` (median):

* a sweep of the kernel's configurations (warps, steps per lane, B / C buffers, register cap)
  at L=8192;
* the default configuration over L, fp32 / fp16 / bf16, kernel only and through the op
  (``torch.ops.hvlm.selective_scan`` with D, z and delta_bias: what MambaLayer calls);
* channel-contiguous inputs ((B, L, D) memory viewed as (B, D, L)) against L-contiguous ones;
* the previous kernel (benchmarks/scan_variants.py) at L=8192, for the record;
* the HBM floor: the bytes that must move (u, delta, z, y over (D, L); B, C over (N, L)) at
  the copy bandwidth measured in the same run;
* ``--graph``: the GPU time of one call (a CUDA graph replayed: no host launch cost) and of
  each kernel (torch.profiler medians), current and previous kernel, next to the
  special-function floor: the hardware exp2 rate measured in the same run times the
  exponentials a call takes;
* ``--plugin``: the TensorRT AOT plugin's kernel against the op's launcher, each dtype, L = 8192 and 8000.

Usage: python benchmarks/scan_tuning.py [--out DIR] [--quick | --sweep-only | --no-sweep | --graph | --plugin]
Every mode writes DIR/scan_tuning-h200.json (docs/benchmarks/ keeps copies renamed per mode).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scan_variants  # noqa: E402

from hvlm_export.ops.selective_scan import selective_scan_ref  # noqa: E402
from hvlm_export.ops.selective_scan_triton import ScanConfig, default_config, selective_scan_triton  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def inputs(length, d=1536, n=16, batch=1, dtype=torch.float32, channels_last=False):
    """Random scan inputs; channels_last lays u / delta / z / B / C out as (B, L, rows) memory."""
    g = torch.Generator(device="cuda").manual_seed(length)

    def r(rows):
        x = torch.randn(batch, length, rows, device="cuda", generator=g).to(dtype)
        return x.transpose(1, 2) if channels_last else x.transpose(1, 2).contiguous()

    return dict(u=r(d), delta=r(d) - 1.0, A=-torch.rand(d, n, device="cuda", generator=g) * 8, B=r(n), C=r(n),
                D=torch.randn(d, device="cuda", generator=g), z=r(d),
                delta_bias=torch.randn(d, device="cuda", generator=g) * 0.5)


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


@functools.cache
def reference(length, d, n, dtype_name, channels_last=False):
    inp = inputs(length, d, n, dtype=DTYPES[dtype_name], channels_last=channels_last)
    as64 = {k: v.double() for k, v in inp.items()}
    return selective_scan_ref(**as64, delta_softplus=True)


def error(length, d, n, dtype_name, fn, channels_last=False):
    """max |out - ref| / max |ref| for y and for the final state."""
    y_ref, s_ref = reference(length, d, n, dtype_name, channels_last)
    y, s = fn(**inputs(length, d, n, dtype=DTYPES[dtype_name], channels_last=channels_last), delta_softplus=True)
    rel = lambda a, b: ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()  # noqa: E731
    return max(rel(y, y_ref), rel(s, s_ref))


def hbm_floor_ms(length, bandwidth, d=1536, n=16, itemsize=4):
    return (4 * d * length + 2 * n * length) * itemsize / bandwidth * 1e3


def sweep(rows, quick):
    """Configurations at L=8192; the four fastest again at L=65536."""
    configs = [ScanConfig(w, i, nb, r) for w in (4, 8) for i in (4, 8, 16) for nb in (1, 2) for r in (168, None)]
    if quick:
        configs = configs[::3]
    timed = []
    for cfg in configs:
        fn = functools.partial(selective_scan_triton, config=cfg)
        try:
            err = error(8192, 1536, 16, "fp32", fn)
            ms = bench(functools.partial(fn, **inputs(8192), delta_softplus=True))
        except triton.runtime.errors.OutOfResources as exc:  # e.g. 16 steps per lane with two buffers
            print(f"sweep {cfg}: {exc}", flush=True)
            continue
        rows.append({"table": "sweep", "config": repr(cfg), "L": 8192, "dtype": "fp32", "ms": ms, "rel_err": err})
        timed.append((ms, cfg))
        print(f"sweep {cfg}: {ms:.4f} ms, rel err {err:.1e}", flush=True)
    for _, cfg in sorted(timed, key=lambda x: x[0])[:4]:
        ms = bench(functools.partial(selective_scan_triton, config=cfg, **inputs(65536), delta_softplus=True))
        rows.append({"table": "sweep", "config": repr(cfg), "L": 65536, "dtype": "fp32", "ms": ms, "rel_err": None})
        print(f"sweep {cfg} at 64K: {ms:.4f} ms", flush=True)


@triton.jit
def _exp2_rate_kernel(x_ptr, y_ptr, ITERS: tl.constexpr):
    i = tl.program_id(0) * 128 + tl.arange(0, 128)
    a = tl.load(x_ptr + i)
    b, c, d = a * 0.5, a * 0.25, a * 0.125
    for _ in range(ITERS):  # four independent chains of exp2
        a, b, c, d = tl.exp2(a) * -0.01, tl.exp2(b) * -0.01, tl.exp2(c) * -0.01, tl.exp2(d) * -0.01
    tl.store(y_ptr + i, a + b + c + d)


def exp2_rate():
    """Hardware exp2 results per second (every multiprocessor busy)."""
    n = torch.cuda.get_device_properties(0).multi_processor_count * 64 * 128
    x = torch.rand(n, device="cuda")
    y = torch.empty_like(x)
    return n * 4096 * 4 / (bench(lambda: _exp2_rate_kernel[(n // 128,)](x, y, ITERS=4096, num_warps=4)) * 1e-3)


def graph_ms(fn):
    """GPU time of one call: fn captured in a CUDA graph, the replay timed."""
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench(graph.replay)


def kernel_us(fn, reps=20):
    """(kernel name, median microseconds) for each kernel of one call, in launch order."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and "kernel" in e.name]
    per_call = len(events) // reps
    return [(events[i].name, statistics.median(e.device_time for e in events[i::per_call])) for i in range(per_call)]


def graph_times(rows, length=8192, d=1536, n=16):
    """GPU time of one call (CUDA graph replay: no host launch cost) and per kernel, the current
    kernel and the previous two-pass one, against the exp2 floor: the exponentials a call
    takes (one per (d, n, t), two per (d, t) for softplus, one for the silu gate; the previous
    kernel takes the per-state one twice) at the hardware exp2 rate measured in the same run."""
    rate = exp2_rate()
    floor = d * length * (n + 3) / rate * 1e6
    print(f"exp2 rate {rate / 1e12:.2f} T/s; exp2 floor of one pass {floor:.1f} us")
    inp = inputs(length)
    for name, fn, cfg in (("current", selective_scan_triton, default_config(n)),
                          ("previous", scan_variants.selective_scan_triton, scan_variants.default_config(length))):
        call = functools.partial(fn, **inp, delta_softplus=True)
        kernels = kernel_us(call)
        rows.append({"table": "graph", "config": f"{name} {cfg!r}", "L": length, "dtype": "fp32",
                     "ms": graph_ms(call), "rel_err": error(length, d, n, "fp32", fn), "kernels_us": kernels,
                     "exp2_floor_us": floor})
        print(f"graph {name}: {rows[-1]['ms']:.4f} ms,", ", ".join(f"{k[:14]} {v:.1f} us" for k, v in kernels))


def plugin(rows, d=1536, n=16):
    """The TensorRT AOT plugin's kernel (the same program, no gate; it splits L into whole chunks
    and a masked tail itself) against the op's launcher on the same call (initial state, no
    gate: ``op_ms``), fp32 / fp16 / bf16, L a multiple of the chunk and not. Error: the plugin's
    y gated after it against the float64 loop, and its last state."""
    from hvlm_export.ops.scan_aot import scan_plugin_kernel
    from hvlm_export.ops.scan_config import plugin_config

    cfg = plugin_config(n)
    for length in (8192, 8000):
        for name in DTYPES:
            inp = inputs(length, d, n, dtype=DTYPES[name])
            h0 = torch.zeros(1, d, n, device="cuda")
            y_ref, s_ref = reference(length, d, n, name)
            y, state = torch.empty_like(inp["u"]), torch.empty_like(h0)

            def run(inp=inp, y=y, state=state, h0=h0, length=length):
                scan_plugin_kernel[(triton.cdiv(d, cfg.warps), 1)](
                    inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["delta_bias"], h0, d, length,
                    n, y, state, SOFTPLUS=True, BLOCK_N=n, ITEMS=cfg.items, NBUF=cfg.buffers, num_warps=cfg.warps,
                    maxnreg=cfg.maxnreg)

            run()
            z = inp["z"].float()
            y_gated = y.float() * z * torch.sigmoid(z)  # the plugin's node has no gate: applied after it
            rel = lambda a, b: ((a.double() - b).abs().max() / b.abs().max()).item()  # noqa: E731
            op = functools.partial(selective_scan_triton, inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"],
                                   inp["D"], None, inp["delta_bias"], True, initial_state=h0)
            rows.append({"table": "plugin", "config": repr(cfg), "L": length, "dtype": name, "ms": bench(run),
                         "op_ms": bench(op), "rel_err": max(rel(y_gated, y_ref), rel(state, s_ref))})
            print(f"plugin {name} L={length}: {rows[-1]['ms']:.4f} ms, op launcher {rows[-1]['op_ms']:.4f} ms, "
                  f"err {rows[-1]['rel_err']:.1e}", flush=True)


def over_lengths(rows, bandwidth, lengths):
    for name, dtype in DTYPES.items():
        for length in lengths:
            inp = inputs(length, dtype=dtype)
            kernel = bench(functools.partial(selective_scan_triton, **inp, delta_softplus=True))
            op = bench(lambda inp=inp: torch.ops.hvlm.selective_scan(
                inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"], inp["delta_bias"], True))
            err = error(length, 1536, 16, name, selective_scan_triton) if length <= 16384 else None
            rows.append({"table": "lengths", "config": repr(default_config(16)), "L": length, "dtype": name,
                         "ms": kernel, "op_ms": op, "rel_err": err,
                         "floor_ms": hbm_floor_ms(length, bandwidth, itemsize=dtype.itemsize)})
            print(f"{name} L={length}: kernel {kernel:.4f} ms, op {op:.4f} ms, err {err}", flush=True)


def layouts_and_previous(rows):
    for channels_last in (False, True):
        for name in ("fp32", "fp16"):
            inp = inputs(8192, dtype=DTYPES[name], channels_last=channels_last)
            ms = bench(functools.partial(selective_scan_triton, **inp, delta_softplus=True))
            err = error(8192, 1536, 16, name, selective_scan_triton, channels_last)
            rows.append({"table": "layout", "config": "channels contiguous" if channels_last else "L contiguous",
                         "L": 8192, "dtype": name, "ms": ms, "rel_err": err})
    old = functools.partial(scan_variants.selective_scan_triton, **inputs(8192), delta_softplus=True)
    rows.append({"table": "previous", "config": repr(scan_variants.default_config(8192)), "L": 8192, "dtype": "fp32",
                 "ms": bench(old), "rel_err": error(8192, 1536, 16, "fp32", scan_variants.selective_scan_triton)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--quick", action="store_true", help="a third of the sweep and fewer lengths")
    parser.add_argument("--sweep-only", action="store_true", help="only the configuration sweep")
    parser.add_argument("--no-sweep", action="store_true", help="everything but the configuration sweep")
    parser.add_argument("--once", action="store_true", help="one call at L=8192, fp32 (to run under a profiler)")
    parser.add_argument("--graph", action="store_true", help="only the GPU time per call and per kernel")
    parser.add_argument("--plugin", action="store_true", help="only the TensorRT plugin's one-pass kernel")
    args = parser.parse_args()
    buffer = torch.empty(1 << 28, device="cuda")
    bandwidth = 2 * buffer.numel() * 4 / (bench(buffer.clone) / 1e3)  # read + write
    del buffer
    if args.once:
        selective_scan_triton(**inputs(8192), delta_softplus=True)
        torch.cuda.synchronize()
        return
    rows: list[dict] = []
    if args.plugin:
        plugin(rows)
    elif args.graph:
        graph_times(rows)
    elif not args.no_sweep:
        sweep(rows, args.quick)
    if not (args.sweep_only or args.graph or args.plugin):
        over_lengths(rows, bandwidth, (8192, 65536) if args.quick else (1024, 8192, 16384, 32768, 65536))
        layouts_and_previous(rows)
    bad = [r for r in rows if r.get("rel_err") is not None and r["rel_err"] > (1e-4 if r["dtype"] == "fp32" else 1e-2)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scan_tuning-h200.json").write_text(json.dumps({"copy_bandwidth_GBs": bandwidth / 1e9, "rows": rows},
                                                          indent=1))
    print(f"\ncopy bandwidth {bandwidth / 1e9:.0f} GB/s")
    print(f"{'table':9} {'config':42} {'L':>6} {'dtype':5} {'ms':>8} {'op ms':>8} {'floor':>7} {'rel err':>8}")
    for r in rows:
        op = f"{r['op_ms']:.4f}" if "op_ms" in r else ""
        floor = f"{r['floor_ms']:.4f}" if "floor_ms" in r else ""
        err = f"{r['rel_err']:.1e}" if r.get("rel_err") is not None else ""
        print(f"{r['table']:9} {r['config']:42} {r['L']:>6} {r['dtype']:5} {r['ms']:8.4f} {op:>8} {floor:>7} {err:>8}")
    print("CORRECTNESS FAILURES:", bad if bad else "none")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
