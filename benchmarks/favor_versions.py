"""The fused FAVOR+ kernels against an earlier version of hvlm_export/ops/favor_triton.py, on a GPU.

For PerformerAttention's fused op at each length (B = 1, 12 heads of 64, m = 266, fp16),
non-causal and causal: device time per call (the op captured in a CUDA graph, replays timed
back to back, best of three), host time per call (enqueueing, median of 7 loops of 50 calls), the relative
difference to the earlier version's output, the error of the layer's output against the
float64 torch path (at the first length), and the current version's kernels (torch.profiler).
The current version is called as PerformerAttention calls it eagerly, through
``hvlm_export.ops.favor.favor_softmax`` (which keeps the scaled projection between calls).

    git show ed8eb3d:hvlm_export/ops/favor_triton.py > favor_old.py
    python benchmarks/favor_versions.py --baseline favor_old.py [--lengths 8192 32768 65536]
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.host_overhead import graph_ms, queued_and_host_ms  # noqa: E402
from hvlm_export.modules import PerformerAttention, cast_module  # noqa: E402
from hvlm_export.modules.performer import _SOFTMAX_EPS  # noqa: E402
from hvlm_export.ops import favor, favor_triton  # noqa: E402


def load(path: Path):
    spec = importlib.util.spec_from_file_location("favor_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel_times(fn, top: int = 6) -> str:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = sorted(((e.key[:32], e.device_time_total / 1e3) for e in prof.key_averages() if e.device_time_total > 0),
                  key=lambda r: -r[1])
    return "; ".join(f"{name} {ms:.3f}" for name, ms in rows[:top])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, required=True, help="an earlier favor_triton.py")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 65536])
    args = p.parse_args()
    versions = {"baseline": load(args.baseline), "current": favor_triton}
    torch.manual_seed(0)
    rows = []
    for causal in (False, True):
        layer = cast_module(PerformerAttention(768, 12, causal=causal), torch.float16).cuda().eval()
        for i, length in enumerate(args.lengths):
            x = torch.randn(1, length, 768, device="cuda", dtype=torch.float16)
            q, k, v = layer._qkv(x)
            want = copy.deepcopy(layer).double()(x.double()) if i == 0 else None
            outs = {}
            for name, module in versions.items():
                # the current version as layers call it eagerly (favor.favor_softmax: the kept scaled W)
                call = favor.favor_softmax if name == "current" else module.favor_softmax_triton
                fn = functools.partial(call, q, k, v, layer.projection_matrix, _SOFTMAX_EPS, causal)
                outs[name] = fn()
                err = rel(layer.out_proj(outs[name]), want) if want is not None else float("nan")
                rows.append((causal, length, name, min(graph_ms(fn) for _ in range(3)), queued_and_host_ms(fn)[1] * 1e3,
                             rel(outs[name], outs["baseline"]), err))
                print(*rows[-1], flush=True)
            print("kernels (current):", kernel_times(functools.partial(
                favor_triton.favor_softmax_triton, q, k, v, layer.projection_matrix, _SOFTMAX_EPS, causal)), flush=True)
    print(f"\nfp16, B = 1, dim 768, 12 heads, {torch.cuda.get_device_name()} (torch {torch.__version__})")
    print("| causal | L | version | GPU ms (graph) | host us | rel diff to baseline | rel err vs float64 layer |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %d | %s | %.3f | %.1f | %.2e | %.2e |" % r)
    ratios = [b[3] / a[3] for a, b in zip(rows[::2], rows[1::2], strict=True)]
    print(f"median GPU time current / baseline: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
