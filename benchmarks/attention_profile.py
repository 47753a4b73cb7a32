"""GPU checks and kernel profiles of the attention mechanisms (issue 8); the timings and
ratios themselves come from ``hvlm-export bench``.

Run on a CUDA machine (the H200 through the device tool)::

    python3 benchmarks/attention_profile.py --names strided local_global performer performer_causal \
        --lengths 8192 65536 --out $OUT/attention_profile.json

1. checks (CUDA): strided / local-global (flex and blocked) / Performer (torch and fused Triton)
   against float64 references on the CPU;
2. profile: per registry benchmark case, mode and length, the top CUDA kernels and the
   GPU-busy share of the wall time (a low share: bound by launching kernels from Python).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.bench import _module_cases  # noqa: E402
from hvlm_export.modules import (  # noqa: E402
    LocalGlobalAttention,
    PerformerAttention,
    StridedAttention,
)

DIM, HEADS = 768, 12


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


@torch.no_grad()
def profile(names: list[str], lengths: list[int], modes: list[str]) -> list[dict]:
    """Top CUDA kernels per case, mode and length, and the GPU-busy share of the wall time
    (a low share means the case is bound by launching kernels from Python, not by the GPU)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    out = []
    for name in names:
        torch.manual_seed(0)
        eager = _module_cases("cuda", torch.float16)[name]()
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
    from hvlm_export.bench import case_names

    p = argparse.ArgumentParser()
    p.add_argument("--names", nargs="+", default=["strided", "local_global", "performer", "performer_causal",
                                                  "cross_memory"], help=f"cases: {', '.join(case_names())}")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 65536])
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"])
    p.add_argument("--skip-checks", action="store_true")
    p.add_argument("--out", default="attention_profile.json")
    args = p.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if not args.skip_checks:
        result["checks"] = checks()
        worst = max(result["checks"], key=lambda r: r["rel"])
        print(f"checks: {len(result['checks'])}, worst {worst}", flush=True)
    result["profile"] = profile(args.names, args.lengths, args.modes)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for r in result["profile"]:
        if "error" in r:
            print(f"--- {r['name']} {r['mode']} L={r['length']}: ERROR {r['error'][:100]}")
            continue
        print(f"--- {r['name']} {r['mode']} L={r['length']}: wall {r['wall_ms']:.3f} ms, GPU busy {r['busy_ms']:.3f} ms: "
              + "; ".join(f"{k[:40]} {us}us x{n}" for k, us, n in r["kernels"][:5]))


if __name__ == "__main__":
    main()
