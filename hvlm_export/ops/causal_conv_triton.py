"""Triton kernel of ``hvlm::causal_conv1d_silu`` (hvlm_export.ops.causal_conv).

One program per (block of steps, block of channels, batch row): K shifted (BLOCK_T, BLOCK_D)
tiles of x (in its layout: channels or steps contiguous) are weighted and summed in float32, SiLU applied,
and the tile is written once. Memory-bound: x is read about once (the shifted tiles overlap
in cache) and the output written once. The tile is long along x's contiguous axis
(``tile``): MambaLayer's steps-contiguous rows are read 64 steps (128 bytes in half
precision) at a time, not 32.

Vector loads along the steps need the row strides and L known to be multiples of 16 elements. An
eager launch gets that from Triton's specialisation of the integer arguments; torch.compile with
dynamic shapes passes them as symbols, which Triton cannot see divisible (the conv then took
0.05 ms at 8K against 0.03 eager on an H200). So the launcher checks the multiples itself
(``ALIGN16``, a guard under torch.compile) and the kernel rebuilds the values as 16 k.
"""

from __future__ import annotations

from pathlib import Path

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from hvlm_export.ops.triton_backed import source_hash

#: this file's and the op's Python as a number one kernel reads (triton_backed: the cache key)
OP_SOURCE: tl.constexpr = tl.constexpr(source_hash(__file__, Path(__file__).with_name("causal_conv.py")))

__all__ = ["causal_conv1d_silu_triton"]

#: (steps, channels, warps) of a program's tile, by x's contiguous axis (benchmarks/conv_tuning.py)
CHANNELS_TILE = (32, 128, 4)
STEPS_TILE = (64, 64, 4)


def tile(x: torch.Tensor) -> tuple[int, int, int]:
    """The tile for x (B, L, D): long along steps when they are its contiguous axis."""
    return STEPS_TILE if x.shape[1] > 1 and x.stride(1) == 1 and x.stride(2) != 1 else CHANNELS_TILE


@triton.jit
def _conv_silu_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, length, dim, sx_b, sx_t, sx_d, so_b, so_t, so_d,
                      K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                      ALIGN16: tl.constexpr = False):
    tl.static_assert(OP_SOURCE >= 0)  # this module's Python, in torch.compile's cache key (triton_backed)
    if ALIGN16:  # L and the row strides are multiples of 16 (module docstring): say so to the compiler
        length, sx_d, so_d = length // 16 * 16, sx_d // 16 * 16, so_d // 16 * 16
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = tl.program_id(2).to(tl.int64)
    dmask = d < dim
    if HAS_BIAS:
        acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32) + tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    else:
        acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
    for k in tl.static_range(K):
        src = t - (K - 1) + k
        mask = (src >= 0)[:, None] & (src < length)[:, None] & dmask[None, :]
        x = tl.load(x_ptr + b * sx_b + src.to(tl.int64)[:, None] * sx_t + d[None, :].to(tl.int64) * sx_d, mask=mask,
                    other=0.0)
        w = tl.load(w_ptr + d * K + k, mask=dmask, other=0.0).to(tl.float32)
        acc += x.to(tl.float32) * w[None, :]
    out = acc / (1.0 + tl.exp(-acc))
    offsets = b * so_b + t.to(tl.int64)[:, None] * so_t + d[None, :].to(tl.int64) * so_d
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=(t < length)[:, None] & dmask[None, :])


def causal_conv1d_silu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              traced: bool = False, config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """x (B, L, D) any strides; weight (D, 1, K); bias (D,) or None -> (B, L, D) in the
    layout of ``conv_output``; ``traced``: called as the op's body (``hvlm_export.ops.triton_backed``);
    ``config``: (steps, channels, warps) of the tile instead of ``tile(x)`` (tuning)."""
    from hvlm_export.ops.causal_conv import conv_output  # not at the top: that module imports this one

    batch, length, dim = x.shape
    out = conv_output(x)
    if out.numel() == 0:
        return out
    w = weight.reshape(dim, -1).contiguous()
    block_t, block_d, warps = config or tile(x)
    align16 = all(v % 16 == 0 for v in (length, x.stride(2), out.stride(2)))  # false for channels-contiguous x
    grid = (triton.cdiv(length, block_t), triton.cdiv(dim, block_d), batch)
    (wrap_triton(_conv_silu_kernel) if traced else _conv_silu_kernel)[grid](
        x, w, bias if bias is not None else w, out, length, dim, *x.stride(), *out.stride(), K=w.shape[1],
        HAS_BIAS=bias is not None, BLOCK_T=block_t, BLOCK_D=block_d, ALIGN16=align16, num_warps=warps)
    return out
