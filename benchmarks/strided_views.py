"""Strided attention on the GPU: SDPA over the group views (the layer's default path) against the
fused Triton kernel (impl='triton'), and each SDPA backend on those views.

B = 1, dim 768, 12 heads of 64, stride 4, fp16, causal and not. Per length: the attention core
alone (``triton.testing.do_bench`` medians; q, k, v given) through SDPA's default backend, each
backend forced (cuDNN, FlashAttention-2, memory-efficient) and the kernel; then the layer's GPU
time (the call captured in a CUDA graph, replays timed) with impl='auto' and impl='triton', and
the dense module's; and the layers' error against the float64 layer at lengths that s divides
and does not.

    python benchmarks/strided_views.py [--lengths 2048 8192 16384 32768 65536]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.modules import CrossMemoryAttention, StridedAttention  # noqa: E402
from hvlm_export.ops import sparse_attention_triton as kernel  # noqa: E402

H, D, E, S = 12, 64, 768, 4
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash2": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=80, return_mode="median")


def graph_ms(fn) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench(graph.replay)


def core_times(length: int, causal: bool) -> dict[str, float]:
    """The attention core on (B, s H, n, Dh) views of (B, L, 3, E)-like projection outputs."""
    n = length // S
    qkv = torch.randn(1, n, 3 * S * H, D, device="cuda", dtype=torch.float16)
    q, k, v = (qkv[:, :, i * S * H:(i + 1) * S * H].transpose(1, 2) for i in range(3))
    times = {"default": bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))}
    for name, backend in BACKENDS.items():
        try:
            with sdpa_kernel(backend):
                times[name] = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        except RuntimeError:  # no kernel of that backend for these inputs
            times[name] = float("nan")
    qq, kk, vv = (torch.randn(1, length, H, D, device="cuda", dtype=torch.float16) for _ in range(3))
    times["kernel"] = bench(lambda: kernel.sparse_attention_triton(qq, kk, vv, None, None, S, -1, causal, D**-0.5))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 16384, 32768, 65536])
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    with torch.inference_mode():
        for causal in (False, True):
            views = StridedAttention(E, H, S, causal=causal).cuda().half().eval()
            fused = copy.deepcopy(views)
            fused.impl = "triton"
            dense = CrossMemoryAttention(E, H).cuda().half().eval()
            ref = copy.deepcopy(views).double()
            for length in (8000, 8190, 2048):
                x = torch.randn(1, length, E, device="cuda", dtype=torch.float16)
                want = ref(x.double())
                errs = [((m(x).double() - want).norm() / want.norm()).item() for m in (views, fused)]
                print(f"causal={causal} L={length}: rel err views {errs[0]:.2e}, kernel {errs[1]:.2e}", flush=True)
            for length in args.lengths:
                times = core_times(length, causal)
                x = torch.randn(1, length, E, device="cuda", dtype=torch.float16)
                for name, layer in (("layer views", views), ("layer kernel", fused), ("dense module", dense)):
                    times[name] = graph_ms(lambda layer=layer, x=x: layer(x))
                rows.append((causal, length, times))
                print(causal, length, {k: round(v, 4) for k, v in times.items()}, flush=True)
    print(f"\nms, fp16, B = 1, 12 heads of 64, s = {S}, {torch.cuda.get_device_name()} (torch {torch.__version__})")
    print("| causal | L | " + " | ".join(rows[0][2]) + " |")
    print("|---|---|" + "---|" * len(rows[0][2]))
    for causal, length, times in rows:
        print(f"| {causal} | {length} | " + " | ".join(f"{v:.4f}" for v in times.values()) + " |")


if __name__ == "__main__":
    main()
