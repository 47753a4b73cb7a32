"""GPU check + timing + profile of the attention mechanisms against a dense module (issue 8).

Run on a CUDA machine (the H200 through the device tool)::

    python3 benchmarks/attention_speed.py --out $OUT/attention_speed.json

1. checks (CUDA): strided / local-global (flex and blocked) / Performer against dense
   references in float64 on the CPU, Performer fp16 against fp32;
2. timing: every case eager and under ``torch.compile`` at each length, as a ratio to the
   dense attention module (same projections, flash SDPA) of the same mode, same run;
   CUDA events, median of ``--repeats`` runs after warm-up;
3. profile: the top CUDA kernels of each case at one length (eager), so a missed target
   comes with its time split.

Prints a short table last; the JSON holds every number.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.modules import (  # noqa: E402
    CrossMemoryAttention,
    HierarchicalAttentionBlock,
    LinearAttentionBlock,
    LocalGlobalAttention,
    MambaLayer,
    PerformerAttention,
    StridedAttention,
)

DIM, HEADS = 768, 12
CASES = {
    "dense": lambda: CrossMemoryAttention(DIM, HEADS),
    "strided": lambda: StridedAttention(DIM, HEADS, stride=4),
    "strided_causal": lambda: StridedAttention(DIM, HEADS, stride=4, causal=True),
    "local_global": lambda: LocalGlobalAttention(DIM, HEADS, local_window=128, num_global_tokens=4),
    "local_global_flex": lambda: LocalGlobalAttention(DIM, HEADS, local_window=128, num_global_tokens=4,
                                                      impl="flex"),
    "performer": lambda: PerformerAttention(DIM, HEADS),
    "performer_torch": lambda: PerformerAttention(DIM, HEADS, impl="torch"),
    "performer_causal": lambda: PerformerAttention(DIM, HEADS, causal=True),
    "performer_causal_c64": lambda: PerformerAttention(DIM, HEADS, causal=True, chunk_size=64),
    "performer_causal_c256": lambda: PerformerAttention(DIM, HEADS, causal=True, chunk_size=256),
    "hierarchical_block": lambda: HierarchicalAttentionBlock("local_global", DIM, HEADS, local_window=128),
    "mamba": lambda: MambaLayer(DIM, 16),
    "linear_block": lambda: LinearAttentionBlock("mamba", DIM),
}


def _time(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    module = module.to(device="cuda", dtype=dtype).eval()
    for sub in module.modules():
        if hasattr(sub, "A_log"):
            sub.A_log.data = sub.A_log.data.float()
    return module


@torch.no_grad()
def checks() -> list[dict]:
    """Relative errors of CUDA paths against float64 CPU references."""
    from tests.references import dense_attention, dense_kernelised, local_global_mask, strided_mask

    rows = []

    def rel(got, want):
        return ((got.double().cpu() - want).norm() / want.norm()).item()

    torch.manual_seed(0)
    for causal in (False, True):
        ref = StridedAttention(64, 4, stride=4, causal=causal).double()
        gpu = StridedAttention(64, 4, stride=4, causal=causal).cuda()
        gpu.load_state_dict(ref.state_dict())
        for length in (1, 3, 4, 5, 8, 17, 1000):
            x = torch.randn(2, length, 64, dtype=torch.float64)
            want = dense_attention(ref, x, strided_mask(length, 4, causal))
            rows.append({"check": f"strided causal={causal} L={length} fp32", "rel": rel(gpu(x.float().cuda()), want)})
            rows.append({"check": f"strided causal={causal} L={length} fp16",
                         "rel": rel(gpu.half()(x.half().cuda()), want)})
            gpu.float()
        for window in (8, 128):
            ref = LocalGlobalAttention(64, 4, local_window=window, num_global_tokens=3, causal=causal).double()
            flex = LocalGlobalAttention(64, 4, local_window=window, num_global_tokens=3, causal=causal).cuda()
            flex.load_state_dict(ref.state_dict())
            for length in (1, 100, 129, 1000, 3001):
                x = torch.randn(2, length, 64, dtype=torch.float64)
                want = dense_attention(ref, x, local_global_mask(length, window, 3, causal), prefix=ref.global_tokens)
                for impl in ("flex", "blocked"):
                    flex.impl = impl
                    rows.append({"check": f"local_global {impl} w={window} causal={causal} L={length} fp32",
                                 "rel": rel(flex(x.float().cuda()), want)})
        ref = PerformerAttention(64, 4, causal=causal, chunk_size=32).double()
        gpu = PerformerAttention(64, 4, causal=causal, chunk_size=32).cuda()
        gpu.load_state_dict(ref.state_dict())
        for length in (1, 33, 1000):
            x = torch.randn(2, length, 64, dtype=torch.float64)
            want = dense_kernelised(ref, x)
            rows.append({"check": f"performer causal={causal} L={length} fp32", "rel": rel(gpu(x.float().cuda()), want)})
            rows.append({"check": f"performer causal={causal} L={length} fp16",
                         "rel": rel(gpu.half()(x.half().cuda()), want)})
            gpu.float()
    layer = PerformerAttention(DIM, HEADS).cuda().half().eval()
    for length in (1, 100, 4097):
        x = torch.randn(2, length, DIM, device="cuda", dtype=torch.float16)
        layer.impl = "torch"
        want = layer(x).float()
        layer.impl = "triton"
        got = layer(x).float()
        rows.append({"check": f"performer triton vs torch fp16 L={length}",
                     "rel": ((got - want).norm() / want.norm()).item()})
    return rows


def timing(names: list[str], lengths: list[int], repeats: int, modes: list[str]) -> list[dict]:
    rows = []
    for name in names:
        torch.manual_seed(0)
        eager = _cast(CASES[name](), torch.float16)
        fns = {"eager": eager}
        if "compiled" in modes:
            fns["compiled"] = torch.compile(eager)
        if "cudagraphs" in modes:  # torch.compile with CUDA graphs: no per-kernel launch cost
            fns["cudagraphs"] = torch.compile(eager, mode="reduce-overhead")
        for length in lengths:
            x = torch.randn(1, length, DIM, device="cuda", dtype=torch.float16)
            for mode, fn in fns.items():
                row = {"name": name, "mode": mode, "length": length}
                try:
                    with torch.no_grad():
                        row["ms"] = _time(functools.partial(fn, x), repeats)
                except Exception as err:  # noqa: BLE001  (a failing case is reported, not fatal)
                    row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                    traceback.print_exc()
                rows.append(row)
                print(row, flush=True)
            del x
        torch.cuda.empty_cache()
    base = {(r["mode"], r["length"]): r.get("ms") for r in rows if r["name"] == "dense"}
    for r in rows:
        d = base.get((r["mode"], r["length"]))
        r["ratio"] = r["ms"] / d if r.get("ms") and d else None
    return rows


@torch.no_grad()
def profile(names: list[str], lengths: list[int], modes: list[str]) -> list[dict]:
    """Top CUDA kernels per case, mode and length, and the GPU-busy share of the wall time
    (a low share means the case is bound by launching kernels from Python, not by the GPU)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    out = []
    for name in names:
        torch.manual_seed(0)
        eager = _cast(CASES[name](), torch.float16)
        fns = {"eager": eager, **({"compiled": torch.compile(eager)} if "compiled" in modes else {})}
        for length in lengths:
            x = torch.randn(1, length, DIM, device="cuda", dtype=torch.float16)
            for mode, fn in fns.items():
                try:
                    for _ in range(3):
                        fn(x)
                    torch.cuda.synchronize()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    with prof(activities=[ProfilerActivity.CUDA]) as p:
                        start.record()
                        fn(x)
                        end.record()
                        torch.cuda.synchronize()
                except Exception as err:  # noqa: BLE001
                    out.append({"name": name, "mode": mode, "length": length, "error": str(err)[:200]})
                    continue
                events = sorted((e for e in p.key_averages() if e.self_device_time_total > 0),
                                key=lambda e: -e.self_device_time_total)
                busy = sum(e.self_device_time_total for e in events) / 1e3
                out.append({"name": name, "mode": mode, "length": length, "wall_ms": start.elapsed_time(end),
                            "busy_ms": busy, "kernels": [(e.key[:70], round(e.self_device_time_total), e.count)
                                                         for e in events[:6]]})
            del x
        torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768, 65536])
    p.add_argument("--names", nargs="+", default=list(CASES))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"])
    p.add_argument("--profile-lengths", type=int, nargs="*", default=[8192, 65536])
    p.add_argument("--profile-names", nargs="*")
    p.add_argument("--skip-checks", action="store_true")
    p.add_argument("--out", default="attention_speed.json")
    args = p.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if not args.skip_checks:
        result["checks"] = checks()
        worst = max(result["checks"], key=lambda r: r["rel"])
        print(f"checks: {len(result['checks'])}, worst {worst}", flush=True)
    result["timing"] = timing(args.names, args.lengths, args.repeats, args.modes) if args.lengths else []
    Path(args.out).write_text(json.dumps(result, indent=1))
    result["profile"] = profile(args.profile_names if args.profile_names is not None else args.names,
                                args.profile_lengths, args.modes)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for r in result["profile"]:
        if "error" in r:
            print(f"--- {r['name']} {r['mode']} L={r['length']}: ERROR {r['error'][:100]}")
            continue
        print(f"--- {r['name']} {r['mode']} L={r['length']}: wall {r['wall_ms']:.3f} ms, GPU busy {r['busy_ms']:.3f} ms: "
              + "; ".join(f"{k[:40]} {us}us x{n}" for k, us, n in r["kernels"][:5]))
    print("\nname | mode | " + " | ".join(f"L={n}" for n in args.lengths))
    for name in args.names:
        for mode in args.modes:
            cells = []
            for length in args.lengths:
                r = next((r for r in result["timing"] if (r["name"], r["mode"], r["length"]) == (name, mode, length)), {})
                cells.append(f"{r['ms']:.3f}ms ({r['ratio']:.2f}x)" if r.get("ratio") else r.get("error", "-")[:20])
            print(f"{name} | {mode} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
