"""Tune and time the Triton selective scan on a GPU (B=1, D=1536, N=16, fp32 unless told).

Prints a table of (block_d, block_t, segments) configurations at L=8192 plus the default
config across lengths, against the HBM floor (read u, delta, B, C, z once, write y) and the
sequential eager loop. Usage: python benchmarks/scan_tuning.py [--out DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.ops.selective_scan import selective_scan_ref  # noqa: E402
from hvlm_export.ops.selective_scan_triton import ScanConfig, default_config, selective_scan_triton  # noqa: E402


def inputs(length, d=1536, n=16, batch=1, dtype=torch.float32):
    g = torch.Generator(device="cuda").manual_seed(length)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g, dtype=dtype)  # noqa: E731
    return dict(u=r(batch, d, length), delta=r(batch, d, length), A=-torch.rand(d, n, device="cuda", generator=g) * 4,
                B=r(batch, n, length), C=r(batch, n, length), D=torch.ones(d, device="cuda"), z=r(batch, d, length),
                delta_bias=torch.zeros(d, device="cuda"))


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def hbm_floor_ms(length, d=1536, n=16, itemsize=4, bandwidth=4.0e12):
    """Bytes that must move (u, delta, z, y over (d, L); B, C over (n, L)) at the measured copy rate."""
    return (4 * d * length + 2 * n * length) * itemsize / bandwidth * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    buffer = torch.empty(1 << 28, device="cuda")
    copy_ms = bench(buffer.clone)
    bandwidth = 2 * buffer.numel() * 4 / (copy_ms / 1e3)  # read + write
    buffer = None
    rows = []
    inp = inputs(8192)
    sweep = [ScanConfig(bd, bt, seg, w) for bd, bt, seg, w in
             [(32, 16, 32, 4), (64, 16, 32, 4), (64, 32, 32, 4), (128, 16, 32, 4), (32, 32, 16, 2), (64, 16, 64, 4),
              (16, 16, 64, 2), (128, 32, 16, 8)]]
    for cfg in sweep:
        try:
            ms = bench(functools.partial(selective_scan_triton, **inp, delta_softplus=True, config=cfg))
        except Exception as err:  # a config the compiler rejects (register pressure) is reported
            rows.append({"config": repr(cfg), "L": 8192, "ms": None, "error": str(err)[:100]})
            continue
        rows.append({"config": repr(cfg), "L": 8192, "ms": ms})
        print(f"{cfg}: {ms:.4f} ms", flush=True)
    best = min((r for r in rows if r["ms"] is not None), key=lambda r: r["ms"])
    lengths = []
    for length in (1024, 8192, 65536):
        inp = inputs(length)
        cfg = default_config(length)
        ms = bench(functools.partial(selective_scan_triton, **inp, delta_softplus=True, config=cfg))
        lengths.append({"L": length, "config": repr(cfg), "ms": ms, "hbm_floor_ms": hbm_floor_ms(length, bandwidth=bandwidth)})
    naive = {}
    for length in (1024, 8192):
        inp = inputs(length)
        naive[length] = bench(functools.partial(selective_scan_ref, **inp, delta_softplus=True)) if length <= 1024 else None
    torch.cuda.synchronize()
    inp = inputs(8192)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    selective_scan_ref(**inp, delta_softplus=True)
    end.record()
    torch.cuda.synchronize()
    naive[8192] = start.elapsed_time(end)
    result = {"device": torch.cuda.get_device_name(), "copy_bandwidth_GBps": bandwidth / 1e9, "sweep_L8192": rows,
              "best": best, "default_by_length": lengths, "naive_ms": naive}
    Path(args.out, "scan_tuning.json").write_text(json.dumps(result, indent=2))
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s; best at L=8192: {best}")
    print("| L | default config | ms | HBM floor ms | naive ms |")
    print("|---|---|---|---|---|")
    for r in lengths:
        print(f"| {r['L']} | {r['config']} | {r['ms']:.4f} | {r['hbm_floor_ms']:.4f} | {naive.get(r['L'], '-')} |")


if __name__ == "__main__":
    main()
