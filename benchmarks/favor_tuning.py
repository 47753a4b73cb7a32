"""Check, tune and time the fused FAVOR+ kernels (hvlm_export.ops.favor_triton) on a GPU.

B = 1, 12 heads of 64 (dim 768), m = 266 features, fp16. Every configuration is first
checked against the float64 torch path of PerformerAttention (relative error of the
attention output), then timed on the device (CUDA graph replays, best of three; kernels only:
the q/k/v projections are done before):

* causal: feature tile (BLOCK_M), tokens per block (BLOCK_L), warps, pipeline stages and
  programs of the causal pass, at each length (the grid: ``--block-m``, ``--block``, ...);
* non-causal and causal with the defaults, next to dense flash SDPA on the same q, k, v
  (``is_causal`` for the causal one), so the kernel's share of a layer's time is visible.

Usage: python benchmarks/favor_tuning.py [--lengths 8192 32768 65536] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.host_overhead import graph_ms  # noqa: E402
from hvlm_export.modules import PerformerAttention  # noqa: E402
from hvlm_export.ops import favor_triton  # noqa: E402


def bench(fn) -> float:
    """Device milliseconds per call: the best of three timings of CUDA graph replays (host
    launch time excluded: at 8K the op's launches take longer than its kernels)."""
    fn()
    return min(graph_ms(fn) for _ in range(3))


def case(length: int, causal: bool):
    """(layer in float64, q, k, v fp16 (B, H, L, Dh), the float64 attention output (B, L, E))."""
    torch.manual_seed(length)
    layer = PerformerAttention(768, 12, causal=causal, impl="torch").cuda().double().eval()
    x = torch.randn(1, length, 768, device="cuda", dtype=torch.float64)
    with torch.no_grad():
        q, k, v = layer._qkv(x)
        y = layer(x)
        want = (y - layer.out_proj.bias) @ torch.linalg.inv(layer.out_proj.weight).T
    return layer, q.half(), k.half(), v.half(), want


def run(layer, q, k, v, causal: bool) -> torch.Tensor:
    return favor_triton.favor_softmax_triton(q, k, v, layer.projection_matrix, 1e-4, causal)


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


def sweep(lengths: list[int], grid: dict[str, list[int]]) -> list[dict]:
    rows = []
    names = ("CAUSAL_CONFIG", "CAUSAL_PROGRAMS")
    defaults = {name: getattr(favor_triton, name) for name in names}
    for length in lengths:
        layer, q, k, v, want = case(length, True)
        for block_m, block, warps, stages, programs in itertools.product(
                grid["block_m"], grid["block"], grid["warps"], grid["stages"], grid["programs"]):
            favor_triton.CAUSAL_CONFIG = (block_m, block, warps, stages)
            favor_triton.CAUSAL_PROGRAMS = programs
            try:
                err = rel(run(layer, q, k, v, True), want)
                ms = bench(functools.partial(run, layer, q, k, v, True))
            except Exception as exc:  # a configuration the compiler or the GPU refuses (shared memory)
                print(f"causal L={length} {favor_triton.CAUSAL_CONFIG} programs={programs}: "
                      f"{type(exc).__name__}: {str(exc)[:120]}", flush=True)
                continue
            rows.append(dict(length=length, block_m=block_m, block=block, warps=warps, stages=stages,
                             programs=programs, ms=ms, rel=err))
            print(f"causal L={length:6d} BLOCK_M={block_m} BLOCK_L={block} warps={warps} stages={stages} "
                  f"programs={programs} {ms:8.3f} ms rel {err:.2e}", flush=True)
    for name, value in defaults.items():
        setattr(favor_triton, name, value)
    return rows


def defaults(lengths: list[int]) -> list[dict]:
    rows = []
    for length, causal in itertools.product(lengths, (False, True)):
        layer, q, k, v, want = case(length, causal)
        err = rel(run(layer, q, k, v, causal), want)
        ms = bench(functools.partial(run, layer, q, k, v, causal))
        flash = bench(functools.partial(F.scaled_dot_product_attention, q, k, v, is_causal=causal))
        rows.append(dict(length=length, causal=causal, ms=ms, flash_ms=flash, rel=err))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 65536])
    parser.add_argument("--no-sweep", action="store_true", help="only the defaults against flash SDPA")
    parser.add_argument("--out", type=Path)
    grid = {"block_m": [32, 64], "block": [64, 128], "warps": [4, 8], "stages": [3], "programs": [256, 512]}
    for name, values in grid.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, nargs="+", default=values,
                            help=f"sweep: the causal pass's {name} values (default {values})")
    args = parser.parse_args()
    grid = {name: getattr(args, name) for name in grid}
    result = {"sweep": [] if args.no_sweep else sweep(args.lengths, grid), "defaults": defaults(args.lengths)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print("\nL       mode       fused ms  flash SDPA ms  ratio  rel err (vs float64)")
    for r in result["defaults"]:
        mode = "causal" if r["causal"] else "non-causal"
        print(f"{r['length']:<7d} {mode:<10s} {r['ms']:8.3f}  {r['flash_ms']:13.3f}  {r['ms'] / r['flash_ms']:5.2f}  "
              f"{r['rel']:.2e}")


if __name__ == "__main__":
    main()
