"""The previous Triton selective-scan kernels ("hybrid": coalesced (64, 16) tiles whose steps run
over the tile's columns in registers, picked out with where/sum; L in segments plus a chain
kernel), kept only so that benchmarks/scan_tuning.py can time the current Gluon kernel against
them in the same run. Not used by the package; superseded by hvlm_export/ops/selective_scan_triton.py
(docs/BENCHMARKS.md has both timings).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["selective_scan_triton", "ScanConfig", "default_config"]



@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus (threshold 20); exp(x) below -15 where log(1 + e^x) rounds to 0
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def _program_state(
    A_ptr, D_ptr, bias_ptr, carry_ptr, dim, nstate, nseg, pid_d, pid_b, pid_s,
    HAS_CARRY: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """What every program starts from: its channels, A, D, bias and the state entering its
    segment (the chained carry, or the initial state, else zero)."""
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dmask = d < dim
    nmask = n < nstate
    dn_mask = dmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + d[:, None] * nstate + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    sn_off = ((pid_b * nseg + pid_s) * dim + d[:, None]) * nstate + n[None, :]
    if HAS_CARRY:
        h = tl.load(carry_ptr + sn_off, mask=dn_mask, other=0.0)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    return d, n, dmask, nmask, dn_mask, A, Dv, bias, sn_off, h


@triton.jit
def _store_y(y, u, Dv, z_ptr, y_ptr, offsets, mask, HAS_Z: tl.constexpr):
    """y + D u, gated by silu(z) when given, cast to y's dtype and stored."""
    y = y + Dv * u
    if HAS_Z:
        z = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        y = y * (z / (1.0 + tl.exp(-z)))
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scan_program(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr,
    y_ptr, state_ptr, carry_ptr, dtsum_ptr,
    dim, length, nstate, seg_len, nseg, pid_d, pid_b, pid_s,
    SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, WRITE_Y: tl.constexpr, HAS_CARRY: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """One (D-block, batch, segment) program: coalesced (BLOCK_D, BLOCK_T) tile loads/stores;
    inside a tile the recurrence runs one step at a time on columns picked out of the register
    tiles (static loop over BLOCK_T). Stores the segment's end state (and, in pass 1 of a
    segmented scan, its delta sum)."""
    d, n, dmask, nmask, dn_mask, A, Dv, bias, sn_off, h = _program_state(
        A_ptr, D_ptr, bias_ptr, carry_ptr, dim, nstate, nseg, pid_d, pid_b, pid_s, HAS_CARRY, BLOCK_D, BLOCK_N)
    t = tl.arange(0, BLOCK_T)
    dt_total = tl.zeros((BLOCK_D,), dtype=tl.float32)
    row = pid_b * dim * length + d[:, None] * length
    nrow = pid_b * nstate * length + n[:, None] * length
    start = pid_s * seg_len
    for t0 in range(start, tl.minimum(start + seg_len, length), BLOCK_T):
        tt = t0 + t
        tmask = tt < length
        m_dt = dmask[:, None] & tmask[None, :]
        m_nt = nmask[:, None] & tmask[None, :]
        u = tl.load(u_ptr + row + tt[None, :], mask=m_dt, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row + tt[None, :], mask=m_dt, other=0.0).to(tl.float32) + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m_dt, dt, 0.0)  # padding steps: decay 1, no input
        du = dt * u
        b_t = tl.trans(tl.load(B_ptr + nrow + tt[None, :], mask=m_nt, other=0.0).to(tl.float32))  # (T, N)
        c_t = tl.trans(tl.load(C_ptr + nrow + tt[None, :], mask=m_nt, other=0.0).to(tl.float32))
        y = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
        for i in tl.static_range(BLOCK_T):
            pick = (t == i)
            dt_i = tl.sum(tl.where(pick[None, :], dt, 0.0), axis=1)
            du_i = tl.sum(tl.where(pick[None, :], du, 0.0), axis=1)
            b_i = tl.sum(tl.where(pick[:, None], b_t, 0.0), axis=0)
            h = tl.exp(dt_i[:, None] * A) * h + du_i[:, None] * b_i[None, :]
            if WRITE_Y:
                c_i = tl.sum(tl.where(pick[:, None], c_t, 0.0), axis=0)
                y_i = tl.sum(h * c_i[None, :], axis=1)
                y = tl.where(pick[None, :], y_i[:, None], y)
        dt_total += tl.sum(dt, axis=1)
        if WRITE_Y:
            _store_y(y, u, Dv[:, None], z_ptr, y_ptr, row + tt[None, :], m_dt, HAS_Z)
    tl.store(state_ptr + sn_off, h, mask=dn_mask)
    if not WRITE_Y:
        tl.store(dtsum_ptr + (pid_b * nseg + pid_s) * dim + d, dt_total, mask=dmask)


@triton.jit
def scan_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr,
    y_ptr, state_ptr, carry_ptr, dtsum_ptr,
    dim, length, nstate, seg_len, nseg,
    SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, WRITE_Y: tl.constexpr,
    HAS_CARRY: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """One launch of the (D-block, batch, segment) grid."""
    _scan_program(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, y_ptr, state_ptr, carry_ptr,
                  dtsum_ptr, dim, length, nstate, seg_len, nseg, tl.program_id(0), tl.program_id(1),
                  tl.program_id(2), SOFTPLUS, HAS_Z, WRITE_Y, HAS_CARRY, BLOCK_D, BLOCK_N, BLOCK_T)


@triton.jit
def chain_segments_kernel(
    end_ptr, dtsum_ptr, A_ptr, init_ptr, carry_ptr, dim, nstate, nseg,
    HAS_INIT: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """carry[s] = exp(A * dtsum[s-1]) * carry[s-1] + end[s-1]; carry[0] = initial state (or 0)."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    mask = (d < dim)[:, None] & (n < nstate)[None, :]
    A = tl.load(A_ptr + d[:, None] * nstate + n[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_INIT:
        h = tl.load(init_ptr + (pid_b * dim + d[:, None]) * nstate + n[None, :], mask=mask, other=0.0)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for s in range(nseg):
        off = ((pid_b * nseg + s) * dim + d[:, None]) * nstate + n[None, :]
        tl.store(carry_ptr + off, h, mask=mask)
        dts = tl.load(dtsum_ptr + (pid_b * nseg + s) * dim + d, mask=d < dim, other=0.0)
        h = tl.exp(A * dts[:, None]) * h + tl.load(end_ptr + off, mask=mask, other=0.0)


class ScanConfig:
    """Tile sizes (channels per program, steps per tile), segment count and warps."""

    def __init__(self, block_d: int = 64, block_t: int = 16, segments: int = 1, num_warps: int = 4) -> None:
        self.block_d, self.block_t, self.segments, self.num_warps = block_d, block_t, segments, num_warps

    def __repr__(self) -> str:
        return f"ScanConfig(block_d={self.block_d}, block_t={self.block_t}, segments={self.segments}, warps={self.num_warps})"


#: steps per segment of the default config: benchmarks/scan_tuning.py found 64 channels,
#: 16-step tiles and 128-step segments best on an H200 at L=8192 (docs/BENCHMARKS.md)
SEGMENT_STEPS = 128


def default_config(length: int) -> ScanConfig:
    """64 channels per program, 16-step tiles, ceil(L / 128) segments (measured best)."""
    return ScanConfig(block_d=64, block_t=16, segments=max(1, triton.cdiv(length, SEGMENT_STEPS)), num_warps=4)


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor,
    delta_softplus: bool,
    initial_state: torch.Tensor | None = None,
    config: ScanConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the scan with the Triton kernels; same contract as ``selective_scan_ref``."""
    batch, dim, length = u.shape
    nstate = A.shape[1]
    u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
    A, D, delta_bias = (t.contiguous().float() for t in (A, D, delta_bias))
    z = z.contiguous() if z is not None else None
    h0 = initial_state.contiguous().float() if initial_state is not None else None
    cfg = config or default_config(length)
    block_n = triton.next_power_of_2(nstate)
    tiles = triton.cdiv(max(length, 1), cfg.block_t)
    nseg = max(1, min(cfg.segments, tiles))
    seg_len = triton.cdiv(tiles, nseg) * cfg.block_t
    nseg = triton.cdiv(max(length, 1), seg_len)
    y = torch.empty_like(u)
    state = torch.empty(batch, nseg, dim, nstate, device=u.device, dtype=torch.float32)
    dtsum = torch.empty(batch, nseg, dim, device=u.device, dtype=torch.float32)
    grid = (triton.cdiv(dim, cfg.block_d), batch, nseg)
    common = dict(dim=dim, length=length, nstate=nstate, seg_len=seg_len, nseg=nseg, SOFTPLUS=bool(delta_softplus),
                  HAS_Z=z is not None, BLOCK_D=cfg.block_d, BLOCK_N=block_n, BLOCK_T=cfg.block_t,
                  num_warps=cfg.num_warps)
    zz = z if z is not None else u
    if nseg == 1:  # one pass, from the initial state (laid out like a (B, 1, D, N) carry)
        carry = h0 if h0 is not None else state
        scan_kernel[grid](u, delta, A, B, C, D, delta_bias, zz, y, state, carry, dtsum,
                          WRITE_Y=True, HAS_CARRY=h0 is not None, **common)
        return y, state[:, 0]
    scan_kernel[grid](u, delta, A, B, C, D, delta_bias, zz, y, state, state, dtsum,
                      WRITE_Y=False, HAS_CARRY=False, **common)
    carry = torch.empty_like(state)
    chain_segments_kernel[grid[:2]](state, dtsum, A, h0 if h0 is not None else state, carry, dim, nstate, nseg,
                                    HAS_INIT=h0 is not None, BLOCK_D=cfg.block_d, BLOCK_N=block_n)
    final = torch.empty_like(state)
    scan_kernel[grid](u, delta, A, B, C, D, delta_bias, zz, y, final, carry, dtsum,
                      WRITE_Y=True, HAS_CARRY=True, **common)
    return y, final[:, -1]
