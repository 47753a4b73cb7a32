"""Fused sparse softmax attention for CUDA: strided groups and local windows, one kernel.

Glossary: B batch, H heads, L length, D head width (Dh), s the stride (dilation), R the
local radius, G the global keys, BLOCK_M queries and BLOCK_N keys per tile.

One flash-attention kernel serves both sparse layers of hvlm_export.modules.sparse. Positions
with the same residue r modulo s form a group (r, r + s, ...); inside a group query i and key
j are group indices, and key j may be attended iff

* j <= i when causal,
* |i - j| <= R when a window is set (R < 0: no window),

plus, before the group's keys, G global keys shared by every query. Strided attention is
(s, no window, G = 0); local + global attention is (s = 1, window R, G). The kernel reads q, k
and v where the projections wrote them, (B, L, H, D) views with one row stride, and writes
(B, L, H * D), the layout the output projection reads: no regrouping copies, no padding, no
mask tensor. Each program takes one (group, b, h) and BLOCK_M consecutive queries of it, and
visits only the key tiles its rows may see: the whole group, its prefix (causal), or the
window around the tile.

Numerics: q k^T and p v run on the half-precision operands with float32 accumulation; the
running max, exp and the normaliser are float32 (an online softmax, exp2 of logits scaled
by log2(e)). Masked keys get the logit -1e30 rather than -inf: a tile in which a row sees no
key adds finite junk that the row's first real key scales by exp2(-1e30 - x) = 0, and every
real query sees at least itself. Forward only: the layers call it for CUDA inference and
keep the torch path (which exports) for everything else.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import triton
import triton.language as tl
from torch.library import wrap_triton

from hvlm_export.ops.triton_backed import source_hash

#: this file's and the op's Python as a number one kernel reads (triton_backed: the cache key)
OP_SOURCE: tl.constexpr = tl.constexpr(source_hash(__file__, Path(__file__).with_name("sparse_attention.py")))

__all__ = ["sparse_attention_triton", "SparseConfig", "CONFIGS"]

_LOG2E = 1.4426950408889634


class SparseConfig(tuple):
    """(block_m, block_n, num_warps, num_stages) of one launch."""

    def __new__(cls, block_m: int, block_n: int, num_warps: int, num_stages: int):
        return super().__new__(cls, (block_m, block_n, num_warps, num_stages))


#: (window, causal) -> launch configuration; measured on the H200 by
#: benchmarks/sparse_tuning.py (docs/BENCHMARKS.md): whole groups want 128-query tiles,
#: windows (a few key tiles per query tile) want more, smaller programs
CONFIGS = {(False, False): SparseConfig(128, 64, 4, 3), (False, True): SparseConfig(128, 64, 4, 3),
           (True, False): SparseConfig(64, 64, 4, 3), (True, True): SparseConfig(64, 32, 4, 3)}


@triton.jit
def _rows(ptr, idx, valid, d, row_stride, D: tl.constexpr):
    """(len(idx), D_PAD) rows idx of one (b, h) slice (zeros outside)."""
    offs = idx.to(tl.int64)[:, None] * row_stride + d[None, :]
    return tl.load(ptr + offs, mask=valid[:, None] & (d[None, :] < D), other=0.0)


@triton.jit
def _whole_rows(ptr, idx, d, row_stride, D: tl.constexpr, D_PAD: tl.constexpr):
    """Like _rows for rows known to exist: no row mask (a plain load when D is a power of 2)."""
    offs = idx.to(tl.int64)[:, None] * row_stride + d[None, :]
    if D == D_PAD:
        return tl.load(ptr + offs)
    return tl.load(ptr + offs, mask=d[None, :] < D, other=0.0)


@triton.jit
def _tile(acc, m_i, l_i, q, k, v, allowed, scale, MASKED: tl.constexpr):
    """One online-softmax step: scores of q against k (masked by ``allowed`` if MASKED),
    folded into the running (acc, max, sum)."""
    s = tl.dot(q, tl.trans(k)) * scale
    if MASKED:
        s = tl.where(allowed, s, -1.0e30)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


#: sizes that change from call to call are not specialised on (== 1, % 16): one compiled kernel
#: serves every length and batch (a new specialisation is a compile of seconds mid-serving);
#: the row strides keep theirs (alignment of the loads)
_DYNAMIC = ["B", "H", "L", "S", "R", "G"]


@triton.jit(do_not_specialize=_DYNAMIC)
def _sparse_fwd(
    q_ptr, k_ptr, v_ptr, gk_ptr, gv_ptr, o_ptr,
    B, H, L, S, R, G, scale, s_b, s_l,
    D: tl.constexpr, D_PAD: tl.constexpr, G_PAD: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tl.static_assert(OP_SOURCE >= 0)  # this module's Python, in torch.compile's cache key (triton_backed)
    scale = tl.cast(scale, tl.float32)  # Inductor passes Python floats as float64
    pid_m, pid_z = tl.program_id(0), tl.program_id(1)
    if CAUSAL:  # the longest query blocks first: less of a tail
        pid_m = tl.num_programs(0) - 1 - pid_m
    r = pid_z // (B * H)
    b = (pid_z // H) % B
    h = pid_z % H
    n = (L - r + S - 1) // S  # tokens of group r
    start = pid_m * BLOCK_M
    if start < n:
        i = start + tl.arange(0, BLOCK_M)
        d = tl.arange(0, D_PAD)
        head = b.to(tl.int64) * s_b + r.to(tl.int64) * s_l + h * D  # q, k, v share their strides
        q = _rows(q_ptr + head, i, i < n, d, S * s_l, D)
        acc = tl.zeros((BLOCK_M, D_PAD), tl.float32)
        m_i = tl.full((BLOCK_M,), -1.0e30, tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        if G_PAD > 0:
            g = tl.arange(0, G_PAD)
            gk = _rows(gk_ptr + h * D, g, g < G, d, H * D, D)  # (G, H, D) contiguous
            gv = _rows(gv_ptr + h * D, g, g < G, d, H * D, D)
            visible = (g < G)[None, :] & (i >= 0)[:, None]
            acc, m_i, l_i = _tile(acc, m_i, l_i, q, gk, gv, visible, scale, True)
        lo = 0
        hi = n
        if CAUSAL:
            hi = tl.minimum(n, start + BLOCK_M)
        if WINDOW:
            lo = tl.maximum(0, start - R)
            if not CAUSAL:
                hi = tl.minimum(n, start + BLOCK_M + R)
        full = lo  # strided: the key tiles that every row of the block sees whole, unmasked
        if not WINDOW:
            full = (start // BLOCK_N) * BLOCK_N if CAUSAL else (n // BLOCK_N) * BLOCK_N
            for j0 in range(0, full, BLOCK_N):
                j = j0 + tl.arange(0, BLOCK_N)
                k = _whole_rows(k_ptr + head, j, d, S * s_l, D, D_PAD)
                v = _whole_rows(v_ptr + head, j, d, S * s_l, D, D_PAD)
                acc, m_i, l_i = _tile(acc, m_i, l_i, q, k, v, None, scale, False)
        for j0 in range(full, hi, BLOCK_N):
            j = j0 + tl.arange(0, BLOCK_N)
            k = _rows(k_ptr + head, j, j < hi, d, S * s_l, D)
            v = _rows(v_ptr + head, j, j < hi, d, S * s_l, D)
            allowed = (j < hi)[None, :] & (i >= 0)[:, None]
            if CAUSAL:
                allowed &= j[None, :] <= i[:, None]
            if WINDOW:
                allowed &= (i[:, None] - j[None, :] <= R) & (j[None, :] - i[:, None] <= R)
            acc, m_i, l_i = _tile(acc, m_i, l_i, q, k, v, allowed, scale, True)
        out = acc / l_i[:, None]
        o_base = o_ptr + b.to(tl.int64) * L * H * D + r.to(tl.int64) * H * D + h * D
        offs = i.to(tl.int64)[:, None] * (S * H * D) + d[None, :]
        tl.store(o_base + offs, out.to(o_ptr.dtype.element_ty), mask=(i < n)[:, None] & (d[None, :] < D))


def _shared_layout(q, k, v):
    """q, k, v as (B, L, H, D) views with one set of strides, rows contiguous and heads
    adjacent (the projections' outputs, or views of one fused buffer, already are); anything
    else is copied to contiguous tensors."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4 or t.shape != q.shape:
            raise ValueError(f"{name} must be a (B, L, H, D) tensor like q {tuple(q.shape)}, got {tuple(t.shape)}.")
    dh = q.shape[-1]
    if all(t.stride() == q.stride() and t.stride()[2:] == (dh, 1) for t in (k, v)) and q.stride()[2:] == (dh, 1):
        return q, k, v
    return q.contiguous(), k.contiguous(), v.contiguous()


def sparse_attention_triton(q, k, v, global_k, global_v, stride: int, radius: int, causal: bool,
                            scale: float, config: SparseConfig | None = None, traced: bool = False):
    """q, k, v (B, L, H, D) half-precision views (rows contiguous); global_k / global_v
    (G, H, D) or None; radius < 0 for no window; ``config`` None: CONFIGS' entry; ``traced``:
    called as the op's body (``hvlm_export.ops.triton_backed``). Returns (B, L, H * D) in q's dtype."""
    import torch

    # not at the top: hvlm_export.ops.sparse_attention imports this module
    from hvlm_export.ops.sparse_attention import MAX_GROUPS, MAX_HEAD_DIM

    q, k, v = _shared_layout(q, k, v)
    b, length, h, dh = q.shape
    if dh > MAX_HEAD_DIM:
        raise ValueError(f"head width {dh} is above the kernel's {MAX_HEAD_DIM}.")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}.")
    # a stride or radius beyond L means the same as L: clamped, so no index can overflow
    stride = min(stride, max(length, 1))
    radius = min(radius, length)
    groups = stride * b * h
    if groups > MAX_GROUPS:
        raise ValueError(f"{groups} (group, batch, head) programs exceed the grid limit {MAX_GROUPS}.")
    out = torch.empty(b, length, h * dh, device=q.device, dtype=q.dtype)
    if length == 0 or b == 0:
        return out
    g = 0 if global_k is None else global_k.shape[0]
    if g:
        global_k, global_v = global_k.contiguous(), global_v.contiguous()
    else:
        global_k = global_v = q  # never read
    block_m, block_n, warps, stages = config or CONFIGS[radius >= 0, bool(causal)]
    n = (length + stride - 1) // stride
    grid = (triton.cdiv(n, block_m), groups)
    # Triton launches on the current device: make it q's (the interpreter runs on the CPU)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        (wrap_triton(_sparse_fwd) if traced else _sparse_fwd)[grid](
            q, k, v, global_k, global_v, out,
            b, h, length, stride, radius, g, scale * _LOG2E, q.stride(0), q.stride(1),
            D=dh, D_PAD=max(16, triton.next_power_of_2(dh)), G_PAD=max(16, triton.next_power_of_2(g)) if g else 0,
            CAUSAL=bool(causal), WINDOW=radius >= 0, BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=warps, num_stages=stages,
        )
    return out
