"""Fused FAVOR+ (softmax kernel, non-causal) for CUDA: the feature maps never reach memory.

Glossary: B batch, H heads, L length, D head width (Dh), m random features, T = BLOCK_M
features per tile. Same numbers as PerformerAttention's torch path (module docstring of
hvlm_export.modules.performer, "Numerics"), in three launches:

1. ``_row_stats``: for every query and key row, the max over m of its projection x'W^T
   (recomputed tile by tile, never stored); for keys also the log-weight
   l_j = rowmax_j - |k'_j|^2 / 2. The sequence frame M = max_j l_j is a torch max over L.
2. ``_key_sums``: one program per (b h, feature tile, split of L) accumulates
   S = sum_j psi_j exp(l_j - M) v_j and z = sum_j psi_j exp(l_j - M) in float32 registers,
   psi_j = max(exp(k'_j W^T - rowmax_j), eps); the splits are summed in torch (divided by
   L, so the half-precision copy that the query pass reads cannot overflow).
3. ``_query_out``: one program per (b h, block of queries) runs over the feature tiles:
   phi = max(exp(q'W^T - rowmax), eps), out += phi S, den += phi z, and writes out / den in
   the (B, L, H * D) layout the output projection reads.

Matmuls are half precision with float32 accumulation; logits, maxima and exp are float32.
Forward only (no autograd): PerformerAttention uses it for CUDA inference and keeps the
torch path for training, export and other devices.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["favor_softmax_triton"]

BLOCK_L, BLOCK_M, SPLITS = 64, 64, 16


@triton.jit
def _load_rows(ptr, rows, d, stride_l, L, D: tl.constexpr):
    """(BLOCK_L, D_PAD) rows of one (b, h) slice."""
    mask = (rows[:, None] < L) & (d[None, :] < D)
    return tl.load(ptr + rows[:, None] * stride_l + d[None, :], mask=mask, other=0.0)


@triton.jit
def _proj_tile(x, w_ptr, m0, d, m, D: tl.constexpr, BLOCK_M: tl.constexpr):
    """x (BLOCK_L, D_PAD) @ W[m0:m0+T]^T -> (BLOCK_L, T) float32; W (m, D) is pre-scaled by
    D^-1/4, so this is x' W^T."""
    f = m0 + tl.arange(0, BLOCK_M)
    w = tl.load(w_ptr + f[:, None] * D + d[None, :], mask=(f[:, None] < m) & (d[None, :] < D), other=0.0)
    return tl.dot(x, tl.trans(w)), f


@triton.jit
def _row_stats(
    x_ptr, w_ptr, rowmax_ptr, logw_ptr, H, L, m, half_sq_scale, sx_b, sx_h, sx_l,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr, KEYS: tl.constexpr,
):
    bh, blk = tl.program_id(0), tl.program_id(1)
    rows = blk * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.arange(0, D_PAD)
    x = _load_rows(x_ptr + (bh // H) * sx_b + (bh % H) * sx_h, rows, d, sx_l, L, D)
    best = tl.full((BLOCK_L,), float("-inf"), tl.float32)
    for m0 in tl.range(0, m, BLOCK_M):
        proj, f = _proj_tile(x, w_ptr, m0, d, m, D, BLOCK_M)
        best = tl.maximum(best, tl.max(tl.where(f[None, :] < m, proj, float("-inf")), axis=1))
    tl.store(rowmax_ptr + bh * L + rows, best, mask=rows < L)
    if KEYS:
        xf = x.to(tl.float32)
        half_sq = tl.sum(xf * xf, axis=1) * half_sq_scale  # |x'|^2 / 2 = |x|^2 D^-1/2 / 2
        tl.store(logw_ptr + bh * L + rows, best - half_sq, mask=rows < L)


@triton.jit
def _key_sums(
    k_ptr, v_ptr, w_ptr, rowmax_ptr, logw_ptr, frame_ptr, s_ptr, z_ptr, H, L, m, log_eps,
    sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, per_split,
    D: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr,
):
    bh, tile, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = bh // H, bh % H
    d = tl.arange(0, D_PAD)
    m0 = tile * BLOCK_M
    frame = tl.load(frame_ptr + bh)
    s_acc = tl.zeros((BLOCK_M, D_PAD), tl.float32)
    z_acc = tl.zeros((BLOCK_M,), tl.float32)
    start = split * per_split
    for l0 in tl.range(start, tl.minimum(start + per_split, L), BLOCK_L):
        rows = l0 + tl.arange(0, BLOCK_L)
        k = _load_rows(k_ptr + b * sk_b + h * sk_h, rows, d, sk_l, L, D)
        v = _load_rows(v_ptr + b * sv_b + h * sv_h, rows, d, sv_l, L, D)
        proj, f = _proj_tile(k, w_ptr, m0, d, m, D, BLOCK_M)
        rmax = tl.load(rowmax_ptr + bh * L + rows, mask=rows < L, other=0.0)
        weight = tl.exp(tl.load(logw_ptr + bh * L + rows, mask=rows < L, other=float("-inf")) - frame)
        psi = tl.exp(tl.maximum(proj - rmax[:, None], log_eps))
        psi = tl.where((f[None, :] < m) & (rows[:, None] < L), psi * weight[:, None], 0.0)
        s_acc += tl.dot(tl.trans(psi.to(v.dtype)), v)
        z_acc += tl.sum(psi, axis=0)
    out = (bh * tl.num_programs(2) + split) * M_PAD + m0 + tl.arange(0, BLOCK_M)
    tl.store(s_ptr + out[:, None] * D_PAD + d[None, :], s_acc)
    tl.store(z_ptr + out, z_acc)


@triton.jit
def _query_out(
    q_ptr, w_ptr, rowmax_ptr, s_ptr, z_ptr, o_ptr, H, L, m, log_eps, sq_b, sq_h, sq_l,
    D: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr,
):
    bh, blk = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rows = blk * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.arange(0, D_PAD)
    q = _load_rows(q_ptr + b * sq_b + h * sq_h, rows, d, sq_l, L, D)
    rmax = tl.load(rowmax_ptr + bh * L + rows, mask=rows < L, other=0.0)
    acc = tl.zeros((BLOCK_L, D_PAD), tl.float32)
    den = tl.zeros((BLOCK_L,), tl.float32)
    for m0 in tl.range(0, m, BLOCK_M):
        proj, f = _proj_tile(q, w_ptr, m0, d, m, D, BLOCK_M)
        phi = tl.where(f[None, :] < m, tl.exp(tl.maximum(proj - rmax[:, None], log_eps)), 0.0)
        s = tl.load(s_ptr + (bh * M_PAD + f[:, None]) * D_PAD + d[None, :])
        z = tl.load(z_ptr + bh * M_PAD + f)
        acc += tl.dot(phi.to(s.dtype), s)
        den += tl.sum(phi * z[None, :].to(tl.float32), axis=1)
    out = acc / den[:, None]
    optr = o_ptr + (b * L + rows[:, None]) * (H * D) + h * D + d[None, :]
    tl.store(optr, out.to(o_ptr.dtype.element_ty), mask=(rows[:, None] < L) & (d[None, :] < D))


def favor_softmax_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor,
                         eps: float) -> torch.Tensor:
    """Non-causal FAVOR+ softmax attention, fused.

    Args:
        q, k, v: (B, H, L, D) float16/bfloat16 on CUDA (any strides with a unit last one).
        projection: (m, D) random features W (unscaled).
        eps: the relative feature floor (features are max(exp(s - rowmax), eps)).

    Returns:
        (B, L, H * D) in q's dtype: the heads already merged for the output projection.
    """
    b, h, length, d = q.shape
    m = projection.shape[0]
    d_pad = max(16, triton.next_power_of_2(d))
    m_pad = triton.cdiv(m, BLOCK_M) * BLOCK_M
    w = (projection.float() * d**-0.25).to(q.dtype).contiguous()  # x' W^T = x (W D^-1/4)^T
    bh = b * h
    dev = q.device
    rowmax_q = torch.empty(bh, length, device=dev, dtype=torch.float32)
    rowmax_k, logw = torch.empty_like(rowmax_q), torch.empty_like(rowmax_q)
    grid = (bh, triton.cdiv(length, BLOCK_L))
    common = dict(D=d, D_PAD=d_pad, BLOCK_L=BLOCK_L, BLOCK_M=BLOCK_M)
    half_sq_scale = d**-0.5 / 2
    _row_stats[grid](q, w, rowmax_q, rowmax_q, h, length, m, half_sq_scale, *q.stride()[:3], KEYS=False, **common)
    _row_stats[grid](k, w, rowmax_k, logw, h, length, m, half_sq_scale, *k.stride()[:3], KEYS=True, **common)
    frame = logw.amax(dim=1)
    splits = max(1, min(SPLITS, triton.cdiv(length, BLOCK_L)))
    per_split = triton.cdiv(triton.cdiv(length, splits), BLOCK_L) * BLOCK_L
    s_part = torch.empty(bh, splits, m_pad, d_pad, device=dev, dtype=torch.float32)
    z_part = torch.empty(bh, splits, m_pad, device=dev, dtype=torch.float32)
    log_eps = math.log(eps)
    _key_sums[(bh, m_pad // BLOCK_M, splits)](
        k, v, w, rowmax_k, logw, frame, s_part, z_part, h, length, m, log_eps,
        *k.stride()[:3], *v.stride()[:3], per_split, M_PAD=m_pad, **common)
    s = (s_part.sum(1) / length).to(q.dtype)  # averaged: bounded by |v|, safe in half precision
    z = (z_part.sum(1) / length).to(q.dtype)
    out = torch.empty(b, length, h * d, device=dev, dtype=q.dtype)
    _query_out[grid](q, w, rowmax_q, s, z, out, h, length, m, log_eps, *q.stride()[:3], M_PAD=m_pad, **common)
    return out
