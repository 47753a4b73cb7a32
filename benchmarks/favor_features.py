"""Experiment: the causal FAVOR+ pass with its feature maps stored once, against the fused op.

hvlm_export.ops.favor_triton recomputes the query and key features (a projection onto W and an
exp per feature tile) in every pass that needs them: the row statistics, the segment key sums
and the causal output pass, where they sit on the pass's dependent chain of small products
(latency-bound: docs/BENCHMARKS.md). Here one kernel computes each row's maximum and then its
features, and stores them in the inputs' dtype, (B H, tiles, L, T) (T features per tile, a tile
contiguous); the key sums and the output pass load them. Costs: 2 (B H L M_PAD) half-precision
values of memory (226 MB at 8K, 906 MB at 64K for 12 heads and m = 266) and their traffic.

For each length: the device time of both versions (CUDA graph replays, best of three), their
kernels (torch.profiler), and each one's error against the float64 torch path of
PerformerAttention. B = 1, 12 heads of 64, m = 266, fp16.

    python benchmarks/favor_features.py [--lengths 8192 32768 65536]
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.ops import favor_triton as ft  # noqa: E402
from hvlm_export.ops.favor_triton import BLOCK_L, _carry, _load_rows, _max2, _proj_tile  # noqa: E402


@triton.jit
def _feature_rows(x_ptr, w_ptr, f_ptr, logw_ptr, bh, rows, H, L, m, log_eps, half_sq_scale, sx_b, sx_h, sx_l,
                  D: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                  KEYS: tl.constexpr):
    d = tl.arange(0, D_PAD)
    valid = rows < L
    x = _load_rows(x_ptr + (bh // H) * sx_b + (bh % H) * sx_h, rows, d, sx_l, L, D)
    best = tl.full((rows.shape[0],), float("-inf"), tl.float32)
    for m0 in tl.range(0, m, BLOCK_M):
        proj, f = _proj_tile(x, w_ptr, m0, d, m, D, BLOCK_M)
        best = tl.maximum(best, tl.max(tl.where(f[None, :] < m, proj, float("-inf")), axis=1))
    for m0 in tl.range(0, m, BLOCK_M):
        proj, f = _proj_tile(x, w_ptr, m0, d, m, D, BLOCK_M)
        phi = tl.where((f[None, :] < m) & valid[:, None], tl.exp(tl.maximum(proj - best[:, None], log_eps)), 0.0)
        row = (bh * (M_PAD // BLOCK_M) + m0 // BLOCK_M) * L + rows.to(tl.int64)
        tl.store(f_ptr + row[:, None] * BLOCK_M + tl.arange(0, BLOCK_M)[None, :], phi.to(f_ptr.dtype.element_ty),
                 mask=valid[:, None])
    if KEYS:
        xf = x.to(tl.float32)
        tl.store(logw_ptr + bh * L + rows, best - tl.sum(xf * xf, axis=1) * half_sq_scale, mask=valid)


@triton.jit(do_not_specialize=["H", "L"])
def _features(q_ptr, k_ptr, w_ptr, fq_ptr, fk_ptr, logw_ptr, H, L, m, log_eps, half_sq_scale,
              sq_b, sq_h, sq_l, sk_b, sk_h, sk_l,
              D: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr):
    """Queries (program axis 2 = 0) and keys (= 1): features of BLOCK_L rows, all tiles."""
    log_eps = tl.cast(log_eps, tl.float32)
    half_sq_scale = tl.cast(half_sq_scale, tl.float32)
    bh, blk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    rows = blk * BLOCK_L + tl.arange(0, BLOCK_L)
    if tl.program_id(2) == 0:
        _feature_rows(q_ptr, w_ptr, fq_ptr, logw_ptr, bh, rows, H, L, m, log_eps, half_sq_scale, sq_b, sq_h, sq_l,
                      D, D_PAD, M_PAD, BLOCK_M, KEYS=False)
    else:
        _feature_rows(k_ptr, w_ptr, fk_ptr, logw_ptr, bh, rows, H, L, m, log_eps, half_sq_scale, sk_b, sk_h, sk_l,
                      D, D_PAD, M_PAD, BLOCK_M, KEYS=True)


@triton.jit
def _feature_tile(f_ptr, bh, tile, rows, L, M_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    row = (bh * (M_PAD // BLOCK_M) + tile) * L + rows.to(tl.int64)
    return tl.load(f_ptr + row[:, None] * BLOCK_M + tl.arange(0, BLOCK_M)[None, :], mask=(rows < L)[:, None], other=0.0)


@triton.jit(do_not_specialize=["H", "L", "per_split"])
def _key_sums_f(fk_ptr, v_ptr, logw_ptr, frame_ptr, s_ptr, z_ptr, H, L, sv_b, sv_h, sv_l, per_split,
                D: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_L: tl.constexpr,
                BLOCK_M: tl.constexpr):
    bh, tile, split = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    b, h = bh // H, bh % H
    d = tl.arange(0, D_PAD)
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
        v = _load_rows(v_ptr + b * sv_b + h * sv_h, rows, d, sv_l, L, D)
        weight = tl.exp(tl.load(logw_ptr + bh * L + rows, mask=rows < L, other=float("-inf")) - frame)
        psi = _feature_tile(fk_ptr, bh, tile, rows, L, M_PAD, BLOCK_M).to(tl.float32) * weight[:, None]
        s_acc += tl.dot(tl.trans(psi.to(v.dtype)), v)
        z_acc += tl.sum(psi, axis=0)
    out = (bh * tl.num_programs(2) + split) * M_PAD + tile * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(s_ptr + out[:, None] * D_PAD + d[None, :], s_acc)
    tl.store(z_ptr + out, z_acc)


@triton.jit(do_not_specialize=["H", "L", "seg"])
def _causal_out_f(fq_ptr, fk_ptr, v_ptr, logw_ptr, enter_ptr, s_ptr, z_ptr, o_ptr, H, L, m, seg, sv_b, sv_h, sv_l,
                  D: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_L: tl.constexpr,
                  BLOCK_M: tl.constexpr):
    bh, sg = tl.program_id(0).to(tl.int64), tl.program_id(1)
    b, h = bh // H, bh % H
    d = tl.arange(0, D_PAD)
    slot = bh * tl.num_programs(1) + sg
    start = sg * seg
    frame = tl.load(enter_ptr + slot)
    s_base, z_base = s_ptr + slot * M_PAD * D_PAD, z_ptr + slot * M_PAD
    for l0 in tl.range(start, tl.minimum(start + seg, L), BLOCK_L):
        rows = l0 + tl.arange(0, BLOCK_L)
        valid = rows < L
        v = _load_rows(v_ptr + b * sv_b + h * sv_h, rows, d, sv_l, L, D)
        lk = tl.load(logw_ptr + bh * L + rows, mask=valid, other=float("-inf"))
        run = tl.maximum(frame, tl.associative_scan(lk, 0, _max2))
        r_end = tl.maximum(frame, tl.max(lk, axis=0))
        decay = tl.exp(frame - r_end)
        wk = tl.exp(lk - r_end)
        scores = tl.zeros((BLOCK_L, BLOCK_L), tl.float32)
        inter = tl.zeros((BLOCK_L, D_PAD), tl.float32)
        den = tl.zeros((BLOCK_L,), tl.float32)
        for m0 in tl.range(0, m, BLOCK_M):
            f = m0 + tl.arange(0, BLOCK_M)
            pq = _feature_tile(fq_ptr, bh, m0 // BLOCK_M, rows, L, M_PAD, BLOCK_M)
            pk = _feature_tile(fk_ptr, bh, m0 // BLOCK_M, rows, L, M_PAD, BLOCK_M)
            scores += tl.dot(pq, tl.trans(pk))
            s_tile = s_base + f[:, None] * D_PAD + d[None, :]
            s = tl.load(s_tile)
            z = tl.load(z_base + f)
            top = tl.maximum(tl.max(tl.max(tl.abs(s), axis=1), axis=0), 1e-30)
            inter += tl.dot(pq, (s / top).to(v.dtype)) * top
            den += tl.sum(pq.to(tl.float32) * z[None, :], axis=1)
            pkw = pk.to(tl.float32) * wk[:, None]
            tl.store(s_tile, s * decay + tl.dot(tl.trans(pkw.to(v.dtype)), v))
            tl.store(z_base + f, z * decay + tl.sum(pkw, axis=0))
        tl.debug_barrier()
        scale = tl.exp(frame - run)
        causal = (rows[None, :] <= rows[:, None]) & valid[None, :]
        a = scores * tl.where(causal, tl.exp(lk[None, :] - run[:, None]), 0.0)
        num = inter * scale[:, None] + tl.dot(a.to(v.dtype), v)
        out = num / (den * scale + tl.sum(a, axis=1))[:, None]
        optr = o_ptr + (b * L + rows[:, None]) * (H * D) + h * D + d[None, :]
        tl.store(optr, out.to(o_ptr.dtype.element_ty), mask=valid[:, None] & (d[None, :] < D))
        frame = r_end


def causal_with_features(q, k, v, projection, eps):
    """The causal op (same arguments and result as favor_triton.favor_softmax_triton(...,
    causal=True)), features stored once."""
    b, h, length, d = q.shape
    m = projection.shape[0]
    d_pad = max(16, triton.next_power_of_2(d))
    block_m, block, warps, stages = ft.CAUSAL_CONFIG
    m_pad = triton.cdiv(m, block_m) * block_m
    w = ft.scale_projection(projection, d, q.dtype)
    bh, log_eps = b * h, math.log(eps)
    fq = torch.empty(bh, m_pad // block_m, length, block_m, device=q.device, dtype=q.dtype)
    fk = torch.empty_like(fq)
    logw = torch.empty(bh, length, device=q.device, dtype=torch.float32)
    common = dict(D=d, D_PAD=d_pad, M_PAD=m_pad, BLOCK_M=block_m)
    _features[(bh, triton.cdiv(length, BLOCK_L), 2)](
        q, k, w, fq, fk, logw, h, length, m, log_eps, d**-0.5 / 2, *q.stride()[:3], *k.stride()[:3],
        BLOCK_L=BLOCK_L, **common)
    seg, splits = ft._segments(length, bh, block)
    s_sums = torch.empty(bh, splits, m_pad, d_pad, device=q.device, dtype=torch.float32)
    z_sums = torch.empty(bh, splits, m_pad, device=q.device, dtype=torch.float32)
    seg_max = torch.empty(bh, splits, device=q.device, dtype=torch.float32)
    _key_sums_f[(bh, m_pad // block_m, splits)](fk, v, logw, seg_max, s_sums, z_sums, h, length, *v.stride()[:3], seg,
                                                 BLOCK_L=BLOCK_L, **common)
    s_carry, z_carry, enter = torch.empty_like(s_sums), torch.empty_like(z_sums), torch.empty_like(seg_max)
    group = splits // 32 + 1
    _carry[(bh, m_pad // block_m, triton.cdiv(splits, group))](
        seg_max, s_sums, z_sums, s_carry, z_carry, enter, splits, group, D_PAD=d_pad, M_PAD=m_pad, BLOCK_M=block_m)
    out = torch.empty(b, length, h * d, device=q.device, dtype=q.dtype)
    _causal_out_f[(bh, splits)](fq, fk, v, logw, enter, s_carry, z_carry, out, h, length, m, seg, *v.stride()[:3],
                                BLOCK_L=block, num_warps=warps, num_stages=stages, **common)
    return out


@torch.no_grad()
def main() -> None:
    from benchmarks.favor_tuning import case, rel
    from benchmarks.favor_versions import kernel_times
    from benchmarks.host_overhead import graph_ms

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 65536])
    p.add_argument("--configs", nargs="+", default=["32,64,4,3", "32,64,8,3"],
                   help="causal pass configurations (feature tile, tokens per block, warps, stages) of the "
                        "stored-features version (the fused op keeps its own)")
    args = p.parse_args()
    default = ft.CAUSAL_CONFIG
    versions = [("fused op", ft.favor_softmax_triton, default)]
    versions += [(f"stored features {c}", causal_with_features, tuple(map(int, c.split(",")))) for c in args.configs]
    rows = []
    for length in args.lengths:
        layer, q, k, v, want = case(length, True)
        for name, fn, config in versions:
            ft.CAUSAL_CONFIG = config
            call = functools.partial(fn, q, k, v, layer.projection_matrix, 1e-4)
            if fn is ft.favor_softmax_triton:
                call = functools.partial(call, causal=True)
            err = rel(call(), want)
            ms = min(graph_ms(call) for _ in range(3))
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            call()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            rows.append((length, name, ms, err, peak))
            print(length, name, f"{ms:.3f} ms", f"rel {err:.2e}", f"{peak:.0f} MiB;", kernel_times(call), flush=True)
            ft.CAUSAL_CONFIG = default
    print(f"\ncausal FAVOR+, fp16, B = 1, 12 heads of 64, m = 266, {torch.cuda.get_device_name()}")
    print("| L | version | GPU ms (graph) | rel err vs float64 | peak MiB |\n|---|---|---|---|---|")
    for r in rows:
        print("| %d | %s | %.3f | %.2e | %.0f |" % r)


if __name__ == "__main__":
    main()
