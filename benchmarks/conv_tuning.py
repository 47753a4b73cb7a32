"""Tune and check the causal conv + SiLU kernel (hvlm_export.ops.causal_conv_triton) on a GPU.

For MambaLayer's shapes (B = 1, D = 1536 channels, K = 4, fp16) in both layouts x can have
(steps contiguous: MambaLayer's channel-first rows; channels contiguous), at each length: every
tile configuration (steps, channels, warps) is checked against ``F.conv1d`` + SiLU in float32
(max relative error) and timed (``triton.testing.do_bench`` median), with the bandwidth it
reaches (x read once, the output written once); the configuration ``tile(x)`` picks is marked.

    python benchmarks/conv_tuning.py [--lengths 8192 32768]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.ops import causal_conv_triton as conv  # noqa: E402

CONFIGS = [(32, 128, 4), (64, 64, 4), (128, 32, 4), (256, 16, 4), (128, 64, 4), (256, 32, 8), (128, 32, 2)]
DIM, K = 1536, 4


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(B, L, D) float32: causal depthwise conv + SiLU."""
    xf = x.float().transpose(1, 2)
    y = F.conv1d(F.pad(xf, (K - 1, 0)), weight.float(), bias.float(), groups=DIM)
    return F.silu(y).transpose(1, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    args = p.parse_args()
    torch.manual_seed(0)
    weight = torch.randn(DIM, 1, K, device="cuda", dtype=torch.float16) * 0.5
    bias = torch.randn(DIM, device="cuda", dtype=torch.float16)
    print(f"| layout | L | steps x channels, warps | ms | GB/s | max rel err |  ({torch.cuda.get_device_name()})")
    print("|---|---|---|---|---|---|")
    for layout in ("steps", "channels"):
        for length in args.lengths:
            rows = torch.randn(1, DIM, length, device="cuda", dtype=torch.float16)
            x = rows.transpose(1, 2) if layout == "steps" else rows.transpose(1, 2).contiguous()
            want = reference(x, weight, bias)
            chosen = conv.tile(x)
            for config in CONFIGS:
                got = conv.causal_conv1d_silu_triton(x, weight, bias, config=config).float()
                err = ((got - want).abs().max() / want.abs().max()).item()
                ms = triton.testing.do_bench(lambda config=config, x=x: conv.causal_conv1d_silu_triton(
                    x, weight, bias, config=config), warmup=10, rep=100, return_mode="median")
                gbs = 2 * x.numel() * x.element_size() / ms / 1e6
                mark = " (default)" if config == chosen else ""
                print(f"| {layout} | {length} | {config[0]} x {config[1]}, {config[2]}{mark} | {ms:.4f} | {gbs:.0f} | "
                      f"{err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
