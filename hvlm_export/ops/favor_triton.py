"""Fused FAVOR+ (softmax kernel) for CUDA: the feature maps never reach memory.

Glossary: B batch, H heads, L length, D head width (Dh), m random features, T = BLOCK_M
features per tile, S the key sums [sum psi_j w_j v_j, sum psi_j w_j] (m x D and m).
Same numbers as PerformerAttention's torch path (module docstring of
hvlm_export.modules.performer, "Numerics"):

1. ``_row_stats`` (queries and keys in one launch): for every row, the max over m of its
   projection x'W^T (recomputed tile by tile, never stored); for keys also the log-weight
   l_j = rowmax_j - |k'_j|^2 / 2 (W pre-scaled by D^-1/4: ``scale_projection``, one torch op,
   kept between eager calls while W is unchanged by hvlm_export.ops.favor).
2. ``_key_sums``: one program per (b h, feature tile, split of L) accumulates S over its
   split in float32 registers, key j weighted exp(l_j - m_s) in the split's own frame m_s
   (the max of l over it), psi_j = max(exp(k'_j W^T - rowmax_j), eps).
3. Non-causal: ``_sum_splits`` adds the splits, each weighted exp(m_s - M) <= 1 into the frame
   M = max_j l_j, divided by L (so the half-precision copy read next cannot overflow), and
   ``_query_out`` (one program per (b h, block of queries)) runs over the feature tiles:
   phi = max(exp(q'W^T - rowmax), eps), out += phi S, den += phi z, and writes out / den.
   Causal: the splits are segments of L; ``_carry`` gives each segment s the exclusive prefix
   of the segment sums in the frame F_s = max_{s' < s} m_s' (= R at the previous segment's
   end, R_t = max_{j <= t} l_j), weights exp(m_s' - F_s) <= 1. ``_causal_out`` (a program per
   (b h, segment)) walks its segment in blocks of BLOCK_L tokens, carrying the running S
   (float32, in the scratch slot it alone owns) in the frame R at the previous block's end,
   R_t in a block being its running max of l after that frame: query t gets
   phi_t S exp(frame - R_t) plus the block's keys j <= t weighted exp(l_j - R_t). Nothing
   computed for query t reads a key after t (later keys in its block weigh an exact 0), so
   for finite inputs the output is exactly causal, as the torch path is (an inf or NaN in a
   later key or value of the same block reaches the earlier rows through 0 * inf).

Launches per call (host time bounds 8K tokens on the H200, BENCHMARKS.md), no key mask, W kept
by the caller: 4 (row stats, key sums, then split sums and output, or carry and output); W's
scaling adds one (two when W is neither float32 nor the inputs' dtype), a key mask three.

The writes go to the (B, L, H * D) layout the output projection reads. Matmuls run on
half-precision operands with float32 accumulation (the carried S is unbounded and stays
float32; its product with the query features reads S / max|S tile|, in [-1, 1]); logits,
maxima and exp are float32. Forward only: PerformerAttention uses it for CUDA inference and
keeps the torch path for training, export, streaming steps and other devices.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from hvlm_export.ops.triton_backed import source_hash

#: this file's and the op's Python as a number one kernel reads (triton_backed: the cache key)
OP_SOURCE: tl.constexpr = tl.constexpr(source_hash(__file__, Path(__file__).with_name("favor.py")))

__all__ = ["favor_softmax_triton", "scale_projection"]

BLOCK_L, BLOCK_M, SPLITS = 64, 64, 16
#: the causal pass's (feature tile, tokens per block, warps, pipeline stages) and programs (segments x
#: B x H: the 132 SMs twice). benchmarks/favor_tuning.py on the H200: (32, 64, 4) the fastest from 16K
#: on; (64, 128, 8) 10% faster at 8K but wrong sums at head width 32 (docs/BENCHMARKS.md).
CAUSAL_CONFIG = (32, 64, 4, 3)
CAUSAL_PROGRAMS = 256
_SUM_ROWS = 8  # features per program of _sum_splits (every split's rows at once: 16 x 8 x 64 floats)
_NEG = -1e30  # the frame of "no key yet": exp(_NEG - real) == 0 and finite arithmetic
# sizes (H, L, per-program lengths) are not specialised on (== 1, % 16): one compiled kernel per
# configuration serves every length, no compile of seconds mid-serving


@triton.jit
def _load_rows(ptr, rows, d, stride_l, L, D: tl.constexpr):
    """(BLOCK_L, D_PAD) rows of one (b, h) slice."""
    mask = (rows[:, None] < L) & (d[None, :] < D)
    return tl.load(ptr + rows.to(tl.int64)[:, None] * stride_l + d[None, :], mask=mask, other=0.0)


@triton.jit
def _proj_tile(x, w_ptr, m0, d, m, D: tl.constexpr, BLOCK_M: tl.constexpr):
    """x (BLOCK_L, D_PAD) @ W[m0:m0+T]^T -> (BLOCK_L, T) float32: x' W^T (W pre-scaled by D^-1/4)."""
    f = m0 + tl.arange(0, BLOCK_M)
    w = tl.load(w_ptr + f[:, None] * D + d[None, :], mask=(f[:, None] < m) & (d[None, :] < D), other=0.0)
    return tl.dot(x, tl.trans(w)), f


@triton.jit
def _stats_rows(x_ptr, w_ptr, rowmax_ptr, logw_ptr, bh, rows, H, L, m, half_sq_scale, sx_b, sx_h, sx_l,
                D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, KEYS: tl.constexpr):
    d = tl.arange(0, D_PAD)
    x = _load_rows(x_ptr + (bh // H) * sx_b + (bh % H) * sx_h, rows, d, sx_l, L, D)
    best = tl.full((rows.shape[0],), float("-inf"), tl.float32)
    for m0 in tl.range(0, m, BLOCK_M):
        proj, f = _proj_tile(x, w_ptr, m0, d, m, D, BLOCK_M)
        best = tl.maximum(best, tl.max(tl.where(f[None, :] < m, proj, float("-inf")), axis=1))
    tl.store(rowmax_ptr + bh * L + rows, best, mask=rows < L)
    if KEYS:
        xf = x.to(tl.float32)
        half_sq = tl.sum(xf * xf, axis=1) * half_sq_scale  # |x'|^2 / 2 = |x|^2 D^-1/2 / 2
        tl.store(logw_ptr + bh * L + rows, best - half_sq, mask=rows < L)


@triton.jit(do_not_specialize=["H", "L"])
def _row_stats(
    q_ptr, k_ptr, w_ptr, rowmax_q_ptr, rowmax_k_ptr, logw_ptr, H, L, m, half_sq_scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Queries (program axis 2 = 0) and keys (= 1) in one launch; reads OP_SOURCE (triton_backed)."""
    tl.static_assert(OP_SOURCE >= 0)
    half_sq_scale = tl.cast(half_sq_scale, tl.float32)  # Inductor passes Python floats as float64
    bh, blk = tl.program_id(0).to(tl.int64), tl.program_id(1)  # int64: (b h) offsets pass 2**31
    rows = blk * BLOCK_L + tl.arange(0, BLOCK_L)
    if tl.program_id(2) == 0:
        _stats_rows(q_ptr, w_ptr, rowmax_q_ptr, logw_ptr, bh, rows, H, L, m, half_sq_scale,
                    sq_b, sq_h, sq_l, D, D_PAD, BLOCK_M, KEYS=False)
    else:
        _stats_rows(k_ptr, w_ptr, rowmax_k_ptr, logw_ptr, bh, rows, H, L, m, half_sq_scale,
                    sk_b, sk_h, sk_l, D, D_PAD, BLOCK_M, KEYS=True)


@triton.jit(do_not_specialize=["H", "L", "per_split"])
def _key_sums(
    k_ptr, v_ptr, w_ptr, rowmax_ptr, logw_ptr, frame_ptr, s_ptr, z_ptr, H, L, m, log_eps,
    sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, per_split,
    D: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Split ``split`` (a segment of L) in its own frame, the max of l over it, which the
    feature tile 0 programs write to frame_ptr (BH, splits): for _sum_splits (non-causal) or
    _carry (causal)."""
    log_eps = tl.cast(log_eps, tl.float32)  # Inductor passes Python floats as float64
    bh, tile, split = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    b, h = bh // H, bh % H
    d = tl.arange(0, D_PAD)
    m0 = tile * BLOCK_M
    start = split * per_split
    best = tl.full((BLOCK_L,), float("-inf"), tl.float32)
    for l0 in tl.range(start, tl.minimum(start + per_split, L), BLOCK_L):
        rows = l0 + tl.arange(0, BLOCK_L)
        best = tl.maximum(best, tl.load(logw_ptr + bh * L + rows, mask=rows < L, other=float("-inf")))
    frame = tl.max(best, axis=0)
    if tile == 0:
        tl.store(frame_ptr + bh * tl.num_programs(2) + split, frame)
    s_acc = tl.zeros((BLOCK_M, D_PAD), tl.float32)
    z_acc = tl.zeros((BLOCK_M,), tl.float32)
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


@triton.jit(do_not_specialize=["L", "splits"])
def _sum_splits(s_part_ptr, z_part_ptr, frame_ptr, s_ptr, z_ptr, L, splits,
                D_PAD: tl.constexpr, M_PAD: tl.constexpr, ROWS: tl.constexpr, SPLITS_PAD: tl.constexpr):
    """Non-causal: S, z of (b h, ROWS features) over the splits (loaded at once, float32), each
    weighted exp(m_s - M) <= 1 from its frame into M = max_j l_j, / L, in the output's dtype."""
    bh, blk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    f = blk * ROWS + tl.arange(0, ROWS)
    d = tl.arange(0, D_PAD)
    sp = tl.arange(0, SPLITS_PAD)
    present = sp < splits
    frames = tl.load(frame_ptr + bh * splits + sp, mask=present, other=float("-inf"))
    weight = tl.where(present, tl.exp(frames - tl.max(frames, axis=0)), 0.0)  # (SPLITS_PAD,)
    row = (bh * splits + sp[:, None]) * M_PAD + f[None, :]  # (SPLITS_PAD, ROWS)
    s_parts = tl.load(s_part_ptr + row[:, :, None] * D_PAD + d[None, None, :], mask=present[:, None, None], other=0.0)
    s_sum = tl.sum(s_parts * weight[:, None, None], axis=0)
    z_sum = tl.sum(tl.load(z_part_ptr + row, mask=present[:, None], other=0.0) * weight[:, None], axis=0)
    out = bh * M_PAD + f
    tl.store(s_ptr + out[:, None] * D_PAD + d[None, :], (s_sum / L).to(s_ptr.dtype.element_ty))
    tl.store(z_ptr + out, (z_sum / L).to(z_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["splits", "group"])
def _carry(seg_max_ptr, s_ptr, z_ptr, cs_ptr, cz_ptr, enter_ptr, splits, group,
           D_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """Causal: what segment j's queries start from: the entering frame F_j = max_{i < j} m_i
    (R at the previous segment's end; _NEG for j = 0) of the segment maxima m_i, and the sums
    C_j = sum_{i < j} exp(m_i - F_j) S_i (weights <= 1, float32) of the segment sums S_i, each
    in its frame m_i. A program per (b h, feature tile, ``group`` segments) sums its first C
    directly (independent loads), then steps through the group (C_{j+1} = exp(F_j - F_{j+1}) C_j
    + exp(m_j - F_{j+1}) S_j): loads stay near-linear in the segments. Tile 0 writes F_j."""
    bh, tile, first = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2) * group
    f = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, D_PAD)
    entering = tl.full((), -1.0e30, tl.float32)  # _NEG
    for i in tl.range(0, first):
        entering = tl.maximum(entering, tl.load(seg_max_ptr + bh * splits + i))
    s_acc = tl.zeros((BLOCK_M, D_PAD), tl.float32)
    z_acc = tl.zeros((BLOCK_M,), tl.float32)
    for i in tl.range(0, first):
        weight = tl.exp(tl.load(seg_max_ptr + bh * splits + i) - entering)
        row = (bh * splits + i) * M_PAD + f
        s_acc += weight * tl.load(s_ptr + row[:, None] * D_PAD + d[None, :])
        z_acc += weight * tl.load(z_ptr + row)
    for j in tl.range(first, tl.minimum(first + group, splits)):
        row = (bh * splits + j) * M_PAD + f
        tl.store(cs_ptr + row[:, None] * D_PAD + d[None, :], s_acc)
        tl.store(cz_ptr + row, z_acc)
        if tile == 0:
            tl.store(enter_ptr + bh * splits + j, entering)
        if j + 1 < tl.minimum(first + group, splits):  # fold S_j in for the group's next segment
            m_j = tl.load(seg_max_ptr + bh * splits + j)
            frame = tl.maximum(entering, m_j)
            decay, weight = tl.exp(entering - frame), tl.exp(m_j - frame)
            s_acc = s_acc * decay + weight * tl.load(s_ptr + row[:, None] * D_PAD + d[None, :])
            z_acc = z_acc * decay + weight * tl.load(z_ptr + row)
            entering = frame


@triton.jit
def _max2(a, b):
    return tl.maximum(a, b)


@triton.jit(do_not_specialize=["H", "L"])
def _query_out(
    q_ptr, w_ptr, rowmax_ptr, s_ptr, z_ptr, o_ptr, H, L, m, log_eps, sq_b, sq_h, sq_l,
    D: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr,
):
    log_eps = tl.cast(log_eps, tl.float32)  # Inductor passes Python floats as float64
    bh, blk = tl.program_id(0).to(tl.int64), tl.program_id(1)
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


@triton.jit(do_not_specialize=["H", "L", "seg"])
def _causal_out(
    q_ptr, k_ptr, v_ptr, w_ptr, rowmax_q_ptr, rowmax_k_ptr, logw_ptr, enter_ptr, s_ptr, z_ptr, o_ptr,
    H, L, m, log_eps, seg, sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
    D: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr,
):
    log_eps = tl.cast(log_eps, tl.float32)  # Inductor passes Python floats as float64
    bh, sg = tl.program_id(0).to(tl.int64), tl.program_id(1)
    b, h = bh // H, bh % H
    d = tl.arange(0, D_PAD)
    slot = bh * tl.num_programs(1) + sg
    start = sg * seg
    frame = tl.load(enter_ptr + slot)  # of the carried sums: R at the previous segment's end (_carry)
    s_base, z_base = s_ptr + slot * M_PAD * D_PAD, z_ptr + slot * M_PAD
    for l0 in tl.range(start, tl.minimum(start + seg, L), BLOCK_L):
        rows = l0 + tl.arange(0, BLOCK_L)
        valid = rows < L
        q = _load_rows(q_ptr + b * sq_b + h * sq_h, rows, d, sq_l, L, D)
        k = _load_rows(k_ptr + b * sk_b + h * sk_h, rows, d, sk_l, L, D)
        v = _load_rows(v_ptr + b * sv_b + h * sv_h, rows, d, sv_l, L, D)
        rq = tl.load(rowmax_q_ptr + bh * L + rows, mask=valid, other=0.0)
        rk = tl.load(rowmax_k_ptr + bh * L + rows, mask=valid, other=0.0)
        lk = tl.load(logw_ptr + bh * L + rows, mask=valid, other=float("-inf"))
        run = tl.maximum(frame, tl.associative_scan(lk, 0, _max2))  # R_t = max_{j <= t} l_j
        r_end = tl.maximum(frame, tl.max(lk, axis=0))  # the frame after this block
        decay = tl.exp(frame - r_end)
        wk = tl.exp(lk - r_end)  # <= 1; padding 0
        scores = tl.zeros((BLOCK_L, BLOCK_L), tl.float32)
        inter = tl.zeros((BLOCK_L, D_PAD), tl.float32)
        den = tl.zeros((BLOCK_L,), tl.float32)
        for m0 in tl.range(0, m, BLOCK_M):
            proj, f = _proj_tile(q, w_ptr, m0, d, m, D, BLOCK_M)
            pq = tl.where(f[None, :] < m, tl.exp(tl.maximum(proj - rq[:, None], log_eps)), 0.0)
            proj, f = _proj_tile(k, w_ptr, m0, d, m, D, BLOCK_M)
            pk = tl.where((f[None, :] < m) & valid[:, None], tl.exp(tl.maximum(proj - rk[:, None], log_eps)), 0.0)
            scores += tl.dot(pq.to(q.dtype), tl.trans(pk.to(q.dtype)))
            s_tile = s_base + f[:, None] * D_PAD + d[None, :]
            s = tl.load(s_tile)
            z = tl.load(z_base + f)
            top = tl.maximum(tl.max(tl.max(tl.abs(s), axis=1), axis=0), 1e-30)  # S / top in [-1, 1]: half-safe
            inter += tl.dot(pq.to(v.dtype), (s / top).to(v.dtype)) * top
            den += tl.sum(pq * z[None, :], axis=1)
            pkw = pk * wk[:, None]
            tl.store(s_tile, s * decay + tl.dot(tl.trans(pkw.to(v.dtype)), v))
            tl.store(z_base + f, z * decay + tl.sum(pkw, axis=0))
        tl.debug_barrier()
        scale = tl.exp(frame - run)  # <= 1: the carried sums were in the frame before this block
        causal = (rows[None, :] <= rows[:, None]) & valid[None, :]
        a = scores * tl.where(causal, tl.exp(lk[None, :] - run[:, None]), 0.0)
        num = inter * scale[:, None] + tl.dot(a.to(v.dtype), v)
        out = num / (den * scale + tl.sum(a, axis=1))[:, None]
        optr = o_ptr + (b * L + rows[:, None]) * (H * D) + h * D + d[None, :]
        tl.store(optr, out.to(o_ptr.dtype.element_ty), mask=valid[:, None] & (d[None, :] < D))
        frame = r_end


def favor_softmax_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor,
                         eps: float, causal: bool = False, key_mask: torch.Tensor | None = None,
                         traced: bool = False, scaled: torch.Tensor | None = None) -> torch.Tensor:
    """FAVOR+ softmax attention, fused (module docstring), launched on q's device."""
    with torch.cuda.device(q.device):
        return _favor_softmax(q, k, v, projection, eps, causal, key_mask, traced, scaled)


def _favor_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor,
                   eps: float, causal: bool = False, key_mask: torch.Tensor | None = None,
                   traced: bool = False, scaled: torch.Tensor | None = None) -> torch.Tensor:
    """favor_softmax_triton on the current device: (B, L, H * D) in q's dtype, the heads merged
    for the output projection.

    Args:
        q, k, v: (B, H, L, D) float16/bfloat16 on CUDA (any strides with a unit last one).
        projection: (m, D) random features W (unscaled).
        eps: the relative feature floor (features are max(exp(s - rowmax), eps)).
        causal: query t attends to keys j <= t only.
        key_mask: (B, L) bool, the tokens that may be keys (non-causal only; None: all).
        traced: called as the op's body (``hvlm_export.ops.triton_backed``: torch.compile traces the launches).
        scaled: ``scale_projection(projection, D, q.dtype)`` if the caller keeps it, or None.
    """
    b, h, length, d = q.shape
    m = projection.shape[0]
    d_pad = max(16, triton.next_power_of_2(d))
    block_m, block, warps, stages = CAUSAL_CONFIG
    if not causal:
        block_m = BLOCK_M
    m_pad = triton.cdiv(m, block_m) * block_m
    w = scale_projection(projection, d, q.dtype) if scaled is None else scaled
    bh, log_eps = b * h, math.log(eps)
    rowmax_q, rowmax_k, logw = torch.empty(3, bh, length, device=q.device, dtype=torch.float32).unbind(0)
    grid = (bh, triton.cdiv(length, BLOCK_L))
    common = dict(D=d, D_PAD=d_pad, BLOCK_L=BLOCK_L, BLOCK_M=block_m, M_PAD=m_pad)
    (wrap_triton(_row_stats) if traced else _row_stats)[grid + (2,)](
        q, k, w, rowmax_q, rowmax_k, logw, h, length, m, d**-0.5 / 2, *q.stride()[:3], *k.stride()[:3],
        D=d, D_PAD=d_pad, BLOCK_L=BLOCK_L, BLOCK_M=block_m)
    out = torch.empty(b, length, h * d, device=q.device, dtype=q.dtype)
    if causal:
        if key_mask is not None:
            raise ValueError("favor_softmax: key_mask is for non-causal attention (right padding needs none when causal)")
        seg, splits = _segments(length, bh, block)
        s_sums, z_sums, seg_max = _split_key_sums(k, v, w, rowmax_k, logw, seg, log_eps, m, common, traced)
        s_carry, z_carry = torch.empty_like(s_sums), torch.empty_like(z_sums)
        enter = torch.empty_like(seg_max)
        group = splits // 32 + 3  # per _carry program: 3 of 22 segments, 11 of 256 (BENCHMARKS); no max() (symbolic)
        (wrap_triton(_carry) if traced else _carry)[(bh, m_pad // block_m, triton.cdiv(splits, group))](
            seg_max, s_sums, z_sums, s_carry, z_carry, enter, splits, group, D_PAD=d_pad, M_PAD=m_pad,
            BLOCK_M=block_m)
        (wrap_triton(_causal_out) if traced else _causal_out)[(bh, splits)](
            q, k, v, w, rowmax_q, rowmax_k, logw, enter, s_carry, z_carry, out,
            h, length, m, log_eps, seg, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            num_warps=warps, num_stages=stages, **{**common, "BLOCK_L": block})
        return out
    if key_mask is not None:  # padded keys weigh exp(_NEG - M) = 0 once a real key sets the frame M
        logw.masked_fill_(~key_mask[:, None, :].expand(b, h, length).reshape(bh, length), _NEG)
    splits = max(1, min(SPLITS, triton.cdiv(length, BLOCK_L)))
    per_split = triton.cdiv(triton.cdiv(length, splits), BLOCK_L) * BLOCK_L
    s_part, z_part, frames = _split_key_sums(k, v, w, rowmax_k, logw, per_split, log_eps, m, common, traced)
    s = torch.empty(bh, m_pad, d_pad, device=q.device, dtype=q.dtype)
    z = torch.empty(bh, m_pad, device=q.device, dtype=q.dtype)
    (wrap_triton(_sum_splits) if traced else _sum_splits)[(bh, m_pad // _SUM_ROWS)](
        s_part, z_part, frames, s, z, length, s_part.shape[1], D_PAD=d_pad, M_PAD=m_pad, ROWS=_SUM_ROWS,
        SPLITS_PAD=SPLITS)
    (wrap_triton(_query_out) if traced else _query_out)[grid](
        q, w, rowmax_q, s, z, out, h, length, m, log_eps, *q.stride()[:3], **common)
    return out


def scale_projection(projection: torch.Tensor, d: int, dtype: torch.dtype) -> torch.Tensor:
    """W D^-1/4 (x W^T D^-1/4 = x' W^T) in float32, rounded once to ``dtype``."""
    same = projection.dtype in (dtype, torch.float32)
    return torch.mul(projection if same else projection.float(), d**-0.25).to(dtype).contiguous()


def _segments(length: int, bh: int, block: int) -> tuple[int, int]:
    """(tokens per segment, segments) of the causal pass: about CAUSAL_PROGRAMS programs, segments a
    multiple of ``block`` and BLOCK_L; no min / max of sizes (sympy Min / Max Inductor cannot tile)."""
    unit = max(block, BLOCK_L)
    seg = triton.cdiv(triton.cdiv(length, unit), triton.cdiv(CAUSAL_PROGRAMS, bh)) * unit
    return seg, triton.cdiv(length, seg)


def _split_key_sums(k, v, w, rowmax_k, logw, per_split, log_eps, m, common, traced):
    """float32 (S (BH, splits, M_PAD, D_PAD), z (BH, splits, M_PAD), frames (BH, splits)) of the
    key splits of ``per_split`` tokens, each split in its own frame (the max of l over it)."""
    bh, length = logw.shape
    splits = triton.cdiv(length, per_split)
    s_part = torch.empty(bh, splits, common["M_PAD"], common["D_PAD"], device=k.device, dtype=torch.float32)
    z_part = torch.empty(bh, splits, common["M_PAD"], device=k.device, dtype=torch.float32)
    frames = torch.empty(bh, splits, device=k.device, dtype=torch.float32)
    (wrap_triton(_key_sums) if traced else _key_sums)[(bh, common["M_PAD"] // common["BLOCK_M"], splits)](
        k, v, w, rowmax_k, logw, frames, s_part, z_part, k.shape[1], length, m, log_eps,
        *k.stride()[:3], *v.stride()[:3], per_split, **common)
    return s_part, z_part, frames
