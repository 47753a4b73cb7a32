"""The previous CUDA selective scan (2026-11-29 morning): one channel's states over two lanes,
L cut into segments, two passes (each segment's end state from zero, a kernel chaining the
segments, every segment again from its true carry-in) that take the exponential twice.
Superseded by the single-pass kernel in hvlm_export/ops/selective_scan_triton.py; kept only so
that benchmarks/scan_tuning.py can time both in the same run (docs/BENCHMARKS.md has both).

Glossary: B batch, D channels, L length, N state size, S segments of L, T = ``STEPS`` steps
per tile, W warps per program, P lanes per channel (``ScanConfig.split``).
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

__all__ = ["selective_scan_triton", "ScanConfig", "default_config"]

#: segments per (channel block, batch row): the launch grid's third axis, which CUDA caps at 65535
MAX_SEGMENTS = 65535
#: programs that keep an H200 busy (about 8 single-warp programs per multiprocessor)
_TARGET_PROGRAMS = 1024


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class ScanConfig:
    """Warps per program, steps per tile, steps per segment, channels per thread and lanes
    per channel (``split``: a channel's N states spread over that many lanes, fewer
    registers per thread). A program holds 32 * warps * channels / split channels."""

    def __init__(self, warps: int = 1, steps: int = 16, segment: int = 256, channels: int = 1,
                 split: int = 1) -> None:
        if (warps not in (1, 2, 4, 8) or steps not in (8, 16, 32) or segment < steps or segment % steps
                or channels not in (1, 2) or split not in (1, 2, 4)):
            raise ValueError(f"ScanConfig: warps in (1, 2, 4, 8), steps in (8, 16, 32), segment a multiple of "
                             f"steps, channels (per thread) 1 or 2, split (lanes per channel) 1, 2 or 4; got "
                             f"warps={warps}, steps={steps}, segment={segment}, channels={channels}, split={split}.")
        self.warps, self.steps, self.segment, self.channels, self.split = warps, steps, segment, channels, split

    def lanes(self, nstate: int) -> int:
        """Lanes per channel for N = ``nstate``: the split, capped at N's power of two."""
        return min(self.split, _pow2_at_least(nstate))

    def block_d(self, nstate: int = 16) -> int:
        """Channels per program for N = ``nstate``."""
        return 32 * self.warps * self.channels // self.lanes(nstate)

    def segments(self, length: int) -> int:
        """Segments of L (at least one); ValueError past the launch grid's limit."""
        count = max(1, -(-length // self.segment))
        if count > MAX_SEGMENTS:
            raise ValueError(f"{self!r} cuts L={length} into {count} segments, more than the launch grid's "
                             f"{MAX_SEGMENTS}.\nNote: use a segment of at least {-(-length // MAX_SEGMENTS)} steps "
                             f"(default_config chooses one).")
        return count

    def __repr__(self) -> str:
        return "ScanConfig(" + ", ".join(f"{k}={v}" for k, v in vars(self).items()) + ")"


def default_config(length: int, dim: int = 1536, batch: int = 1, nstate: int = 16) -> ScanConfig:
    """One warp per program, a channel's states over two lanes, 16-step tiles, 128-step
    segments: within about 2 % of the fastest configuration in benchmarks/scan_tuning.py's
    sweeps on an H200 (docs/BENCHMARKS.md; 256-step segments measured 1 - 2 % faster or
    slower from run to run). Shorter segments (down to 32 steps) where 128 would leave the
    GPU fewer than ~1024 programs; longer ones where L would need more segments than the
    launch grid takes."""
    cfg = ScanConfig(warps=1, steps=16, split=2)
    blocks = -(-dim // cfg.block_d(nstate)) * max(batch, 1)
    wanted = -(-length * blocks // _TARGET_PROGRAMS)  # segment length giving ~_TARGET_PROGRAMS programs
    segment = min(128, max(32, wanted))
    segment = max(segment, -(-length // MAX_SEGMENTS))  # the grid's limit on segments
    cfg.segment = -(-segment // cfg.steps) * cfg.steps
    return cfg


_LOG2E, _LN2 = gl.constexpr(1.4426950408889634), gl.constexpr(0.6931471805599453)
#: warps per program (32 states each) and segments per step of the kernel that chains segments
_CHAIN_WARPS, _CHAIN_CHUNK = 1, 16


@gluon.jit
def _softplus(x):
    # F.softplus (threshold 20), e^x below -15; hardware exp2 / log2 (absolute error ~1e-7)
    e = gl.exp2(x * _LOG2E)
    log2 = gl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [1.0 + e], dtype=gl.float32,
                                     is_pure=True, pack=1)
    return gl.where(x > 20.0, x, gl.where(x < -15.0, e, log2 * _LN2))


@triton.constexpr_function
def _tile_layout(rows_contiguous, rows, steps, warps):
    """Layout of a (rows, T) tile read from memory: coalesced along T, or along the rows when
    those are contiguous; a warp's lanes cover at most its share of the rows."""
    rows_per_warp = max(1, rows // warps)
    if rows_contiguous:
        lanes_r = min(32, rows_per_warp)
        return gl.BlockedLayout([1, 1], [lanes_r, 32 // lanes_r], [warps, 1], [0, 1])
    lanes_r = min(32 // max(1, steps // 4), rows_per_warp)
    lanes_t = 32 // lanes_r
    return gl.BlockedLayout([1, max(1, steps // lanes_t)], [lanes_r, lanes_t], [warps, 1], [1, 0])


@gluon.jit
def _fetch(base, s_row, s_t, row0, t0, nrows, length, ROWS: gl.constexpr, T: gl.constexpr,
           ROWS_CONTIGUOUS: gl.constexpr):
    """Issue the load of the (ROWS, T) tile at (row0, t0), in its dtype and its coalesced
    layout (zeros outside the tensor); the values are used one tile later (a prefetch)."""
    W: gl.constexpr = gl.num_warps()
    LL: gl.constexpr = _tile_layout(ROWS_CONTIGUOUS, ROWS, T, W)
    r = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, LL))
    t = t0 + gl.arange(0, T, layout=gl.SliceLayout(0, LL))
    mask = gl.expand_dims(r < nrows, 1) & gl.expand_dims(t < length, 0)
    offsets = gl.expand_dims(r.to(gl.int64) * s_row, 1) + gl.expand_dims(t.to(gl.int64) * s_t, 0)
    return gl.load(base + offsets, mask=mask, other=0.0)


@gluon.jit
def _f32(tile, layout: gl.constexpr):
    return gl.convert_layout(tile.to(gl.float32), layout)


@gluon.jit
def _finish_tile(y, u, Dv, z_raw, y_base, sy_d, sy_t, d0, t0, dim, length, BLOCK_D: gl.constexpr,
                 T: gl.constexpr, HAS_Z: gl.constexpr, Y_DC: gl.constexpr, LC: gl.constexpr):
    """y + D u of a (BLOCK_D, T) tile, gated by silu(z) when given, stored coalesced in y's layout."""
    y = gl.convert_layout(y, LC) + Dv * u
    if HAS_Z:
        z = _f32(z_raw, LC)
        y = y * (z / (1.0 + gl.exp2(-z * _LOG2E)))  # silu
    LY: gl.constexpr = _tile_layout(Y_DC, BLOCK_D, T, gl.num_warps())
    y = gl.convert_layout(y, LY)
    d_y, t_y = d0 + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, LY)), t0 + gl.arange(0, T, layout=gl.SliceLayout(0, LY))
    offsets = gl.expand_dims(d_y.to(gl.int64) * sy_d, 1) + gl.expand_dims(t_y.to(gl.int64) * sy_t, 0)
    gl.store(y_base + offsets, y.to(y_base.dtype.element_ty),
             mask=gl.expand_dims(d_y < dim, 1) & gl.expand_dims(t_y < length, 0))


@gluon.jit
def _fetch_tiles(u_base, d_base, b_base, c_base, z_base, su_d, su_t, sd_d, sd_t, sB_n, sB_t, sC_n, sC_t, sz_d,
                 sz_t, d0, t0, dim, nstate, length, BLOCK_D: gl.constexpr, BLOCK_N: gl.constexpr, T: gl.constexpr,
                 WRITE_Y: gl.constexpr, HAS_Z: gl.constexpr, U_DC: gl.constexpr, DT_DC: gl.constexpr,
                 Z_DC: gl.constexpr, BC_NC: gl.constexpr):
    """Issue the loads of the tiles at step t0: u, delta, B and, when y is written, C and z."""
    u_raw = _fetch(u_base, su_d, su_t, d0, t0, dim, length, BLOCK_D, T, U_DC)
    d_raw = _fetch(d_base, sd_d, sd_t, d0, t0, dim, length, BLOCK_D, T, DT_DC)
    b_raw = _fetch(b_base, sB_n, sB_t, 0, t0, nstate, length, BLOCK_N, T, BC_NC)
    c_raw, z_raw = b_raw, u_raw
    if WRITE_Y:
        c_raw = _fetch(c_base, sC_n, sC_t, 0, t0, nstate, length, BLOCK_N, T, BC_NC)
        if HAS_Z:
            z_raw = _fetch(z_base, sz_d, sz_t, d0, t0, dim, length, BLOCK_D, T, Z_DC)
    return u_raw, d_raw, b_raw, c_raw, z_raw


@gluon.jit
def _scan_program(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, y_ptr, state_ptr, carry_ptr, dtsum_ptr,
    dim, length, nstate, seg_len, nseg, pid_d, pid_b, pid_s,
    su_b, su_d, su_t, sd_b, sd_d, sd_t, sz_b, sz_d, sz_t, sy_b, sy_d, sy_t, sB_b, sB_n, sB_t, sC_b, sC_n, sC_t,
    SOFTPLUS: gl.constexpr, HAS_Z: gl.constexpr, WRITE_Y: gl.constexpr, HAS_CARRY: gl.constexpr,
    BLOCK_N: gl.constexpr, T: gl.constexpr, CPT: gl.constexpr, SPLIT: gl.constexpr,
    U_DC: gl.constexpr, DT_DC: gl.constexpr, Z_DC: gl.constexpr, Y_DC: gl.constexpr, BC_NC: gl.constexpr,
):
    """One (channel block, batch row, segment) program (module docstring); pid_b int64. *_DC:
    that tensor's channels are contiguous in memory (else its steps); BC_NC: B / C's states
    are. Stores the segment's end state and, without WRITE_Y (pass 1), its delta sum."""
    W: gl.constexpr = gl.num_warps()
    BLOCK_D: gl.constexpr = 32 * W * CPT // SPLIT
    # the state (CPT channels per lane group, a channel's N states over SPLIT lanes); a y tile
    LS: gl.constexpr = gl.BlockedLayout([CPT, BLOCK_N // SPLIT], [32 // SPLIT, SPLIT], [W, 1], [1, 0])
    LR: gl.constexpr = gl.BlockedLayout([CPT, T // SPLIT], [32 // SPLIT, SPLIT], [W, 1], [1, 0])
    LC: gl.constexpr = _tile_layout(U_DC, BLOCK_D, T, W)  # where a tile's elementwise work happens
    LB: gl.constexpr = _tile_layout(BC_NC, BLOCK_N, T, W)
    SH: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    d_s = pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, LS))
    n_s = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, LS))
    dn_mask = gl.expand_dims(d_s < dim, 1) & gl.expand_dims(n_s < nstate, 0)
    A2 = gl.load(A_ptr + gl.expand_dims(d_s, 1) * nstate + gl.expand_dims(n_s, 0), mask=dn_mask, other=0.0) * _LOG2E
    sn_off = ((pid_b * nseg + pid_s) * dim + gl.expand_dims(d_s, 1)) * nstate + gl.expand_dims(n_s, 0)
    if HAS_CARRY:
        h = gl.load(carry_ptr + sn_off, mask=dn_mask, other=0.0)
    else:
        h = gl.zeros([BLOCK_D, BLOCK_N], gl.float32, LS)
    d0 = pid_d * BLOCK_D
    d_c = d0 + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, LC))
    t_c = gl.arange(0, T, layout=gl.SliceLayout(0, LC))
    bias = gl.expand_dims(gl.load(bias_ptr + d_c, mask=d_c < dim, other=0.0), 1)
    Dv = gl.expand_dims(gl.load(D_ptr + d_c, mask=d_c < dim, other=0.0), 1)
    col = gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(0, LR)), 0)
    s_dt = gl.allocate_shared_memory(gl.float32, [T, BLOCK_D], SH)  # a step's channels: one row, no bank conflicts
    s_du = gl.allocate_shared_memory(gl.float32, [T, BLOCK_D], SH)
    s_b = gl.allocate_shared_memory(gl.float32, [T, BLOCK_N], SH)
    s_c = gl.allocate_shared_memory(gl.float32, [T, BLOCK_N], SH)
    dt_total = gl.zeros([BLOCK_D], gl.float32, gl.SliceLayout(1, LC))
    start = pid_s * seg_len
    # the first tile's loads; each iteration issues the next tile's before its steps run
    bases = (u_ptr + pid_b * su_b, delta_ptr + pid_b * sd_b, B_ptr + pid_b * sB_b, C_ptr + pid_b * sC_b,
             z_ptr + pid_b * sz_b)
    strides = (su_d, su_t, sd_d, sd_t, sB_n, sB_t, sC_n, sC_t, sz_d, sz_t)
    u_raw, d_raw, b_raw, c_raw, z_raw = _fetch_tiles(*bases, *strides, d0, start, dim, nstate, length, BLOCK_D,
                                                     BLOCK_N, T, WRITE_Y, HAS_Z, U_DC, DT_DC, Z_DC, BC_NC)
    for t0 in range(start, gl.minimum(start + seg_len, length), T):
        inside = gl.expand_dims(d_c < dim, 1) & gl.expand_dims(t0 + t_c < length, 0)
        u = _f32(u_raw, LC)
        dt = _f32(d_raw, LC) + bias
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = gl.where(inside, dt, 0.0)  # padding steps: decay 1, no input
        dt_total += gl.sum(dt, axis=1)
        gl.thread_barrier()  # the previous tile's steps are done with the buffers
        s_dt.permute([1, 0]).store(dt)
        s_du.permute([1, 0]).store(dt * u)
        s_b.permute([1, 0]).store(_f32(b_raw, LB))
        if WRITE_Y:
            s_c.permute([1, 0]).store(_f32(c_raw, LB))
        z_cur = z_raw
        u_raw, d_raw, b_raw, c_raw, z_raw = _fetch_tiles(*bases, *strides, d0, t0 + T, dim, nstate, length, BLOCK_D,
                                                         BLOCK_N, T, WRITE_Y, HAS_Z, U_DC, DT_DC, Z_DC, BC_NC)
        gl.thread_barrier()
        y = gl.zeros([BLOCK_D, T], gl.float32, LR)
        for i in gl.static_range(T):
            dt_i = s_dt.slice(i, 1, dim=0).permute([1, 0]).load(LS)  # (BLOCK_D, 1): the thread's channel
            du_i = s_du.slice(i, 1, dim=0).permute([1, 0]).load(LS)
            b_i = s_b.slice(i, 1, dim=0).load(LS)  # (1, BLOCK_N): the same in every thread
            h = gl.exp2(dt_i * A2) * h + du_i * b_i
            if WRITE_Y:
                c_i = s_c.slice(i, 1, dim=0).load(LS)
                y_i = gl.convert_layout(gl.sum(h * c_i, axis=1), gl.SliceLayout(1, LR), assert_trivial=True)
                y = gl.where(col == i, gl.expand_dims(y_i, 1), y)  # register i of the thread's row
        if WRITE_Y:
            _finish_tile(y, u, Dv, z_cur, y_ptr + pid_b * sy_b, sy_d, sy_t, d0, t0, dim, length, BLOCK_D, T, HAS_Z,
                         Y_DC, LC)
    gl.store(state_ptr + sn_off, h, mask=dn_mask)
    if not WRITE_Y:
        gl.store(dtsum_ptr + (pid_b * nseg + pid_s) * dim + d_c, dt_total, mask=d_c < dim)


@gluon.jit
def scan_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, y_ptr, state_ptr, carry_ptr, dtsum_ptr,
    dim, length, nstate, seg_len, nseg,
    su_b, su_d, su_t, sd_b, sd_d, sd_t, sz_b, sz_d, sz_t, sy_b, sy_d, sy_t, sB_b, sB_n, sB_t, sC_b, sC_n, sC_t,
    SOFTPLUS: gl.constexpr, HAS_Z: gl.constexpr, WRITE_Y: gl.constexpr, HAS_CARRY: gl.constexpr,
    BLOCK_N: gl.constexpr, T: gl.constexpr, CPT: gl.constexpr, SPLIT: gl.constexpr,
    U_DC: gl.constexpr, DT_DC: gl.constexpr, Z_DC: gl.constexpr, Y_DC: gl.constexpr, BC_NC: gl.constexpr,
):
    """One launch of the (channel block, batch, segment) grid."""
    _scan_program(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, y_ptr, state_ptr, carry_ptr,
                  dtsum_ptr, dim, length, nstate, seg_len, nseg, gl.program_id(0), gl.program_id(1).to(gl.int64),
                  gl.program_id(2), su_b, su_d, su_t, sd_b, sd_d, sd_t, sz_b, sz_d, sz_t, sy_b, sy_d, sy_t,
                  sB_b, sB_n, sB_t, sC_b, sC_n, sC_t, SOFTPLUS, HAS_Z, WRITE_Y, HAS_CARRY, BLOCK_N, T, CPT,
                  SPLIT, U_DC, DT_DC, Z_DC, Y_DC, BC_NC)


@gluon.jit
def _then(a1, b1, a2, b2):
    """Two segments in a row: h -> a2 (a1 h + b1) + b2."""
    return a1 * a2, b1 * a2 + b2


@gluon.jit
def chain_segments_kernel(end_ptr, dtsum_ptr, A_ptr, init_ptr, carry_ptr, dim, nstate, nseg,
                          HAS_INIT: gl.constexpr, CHUNK: gl.constexpr):
    """carry[s] = exp(A * dtsum[s-1]) * carry[s-1] + end[s-1]; carry[0] = initial state (or 0).

    A thread per state of the flattened (D, N), a program per 32 W states and batch row; CHUNK
    segments at a time, loaded at once (coalesced) and scanned in the thread's registers."""
    W: gl.constexpr = gl.num_warps()
    L2: gl.constexpr = gl.BlockedLayout([CHUNK, 1], [1, 32], [1, W], [0, 1])
    pid_b = gl.program_id(1).to(gl.int64)
    e = gl.program_id(0) * (32 * W) + gl.arange(0, 32 * W, layout=gl.SliceLayout(0, L2))
    size = dim * nstate
    row = gl.expand_dims(e, 0)  # (1, 32 W): the states
    emask = row < size
    A2 = gl.load(A_ptr + row, mask=emask, other=0.0) * _LOG2E
    channel = row // nstate
    if HAS_INIT:
        h = gl.load(init_ptr + pid_b * size + row, mask=emask, other=0.0)
    else:
        h = gl.zeros([1, 32 * W], gl.float32, L2)
    seg = gl.expand_dims(gl.arange(0, CHUNK, layout=gl.SliceLayout(1, L2)), 1)  # (CHUNK, 1)
    for s0 in range(0, nseg, CHUNK):
        m = ((s0 + seg) < nseg) & emask
        end = gl.load(end_ptr + (pid_b * nseg + s0 + seg) * size + row, mask=m, other=0.0)
        dts = gl.load(dtsum_ptr + (pid_b * nseg + s0 + seg) * dim + channel, mask=m, other=0.0)
        decay, into = gl.associative_scan((gl.exp2(A2 * dts), end), 0, _then)
        after = decay * h + into  # the state after segment s0 + i
        gl.store(carry_ptr + (pid_b * nseg + s0) * size + row, h, mask=emask)
        later = s0 + 1 + seg
        gl.store(carry_ptr + (pid_b * nseg + later) * size + row, after,
                 mask=(later < s0 + CHUNK) & (later < nseg) & emask)
        h = gl.expand_dims(gl.sum(gl.where(seg == CHUNK - 1, after, 0.0), axis=0), 0)


def _channels_contiguous(t: torch.Tensor) -> bool:
    """Whether a (B, rows, L) tensor's rows are its contiguous axis (rather than L)."""
    return t.shape[2] > 1 and t.stride(1) == 1 and t.stride(2) != 1


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
    """Run the scan with the Gluon kernels; same contract as ``selective_scan_ref``.

    u, delta, z, B and C are read in place with their strides (L-contiguous or channel-
    contiguous, as the views MambaLayer passes); y gets u's layout.
    """
    batch, dim, length = u.shape
    nstate = A.shape[1]
    A, D, delta_bias = (t.contiguous().float() for t in (A, D, delta_bias))
    h0 = initial_state.contiguous().float() if initial_state is not None else None
    cfg = config or default_config(length, dim, batch, nstate)
    nseg = cfg.segments(length)
    y = torch.empty_like(u)
    state = torch.empty(batch, nseg, dim, nstate, device=u.device, dtype=torch.float32)
    dtsum = torch.empty(batch, nseg, dim, device=u.device, dtype=torch.float32)
    if length == 0 or batch == 0 or dim == 0:
        return y, (h0.clone() if h0 is not None else state.new_zeros(batch, dim, nstate))
    block_n = triton.next_power_of_2(nstate)
    grid = (triton.cdiv(dim, cfg.block_d(nstate)), batch, nseg)
    zz = z if z is not None else u
    strides = (*u.stride(), *delta.stride(), *zz.stride(), *y.stride(), *B.stride(), *C.stride())
    common = dict(SOFTPLUS=bool(delta_softplus), HAS_Z=z is not None, BLOCK_N=block_n, T=cfg.steps,
                  CPT=cfg.channels, SPLIT=cfg.lanes(nstate), U_DC=_channels_contiguous(u),
                  DT_DC=_channels_contiguous(delta),
                  Z_DC=_channels_contiguous(zz), Y_DC=_channels_contiguous(y), BC_NC=_channels_contiguous(B), num_warps=cfg.warps)
    ints = (dim, length, nstate, cfg.segment, nseg, *strides)
    if nseg == 1:  # one pass, from the initial state (laid out like a (B, 1, D, N) carry)
        carry = h0 if h0 is not None else state
        scan_kernel[grid](u, delta, A, B, C, D, delta_bias, zz, y, state, carry, dtsum, *ints, WRITE_Y=True,
                          HAS_CARRY=h0 is not None, **common)
        return y, state[:, 0]
    scan_kernel[grid](u, delta, A, B, C, D, delta_bias, zz, y, state, state, dtsum, *ints, WRITE_Y=False,
                      HAS_CARRY=False, **common)
    carry = torch.empty_like(state)
    chain_segments_kernel[(triton.cdiv(dim * nstate, 32 * _CHAIN_WARPS), batch)](
        state, dtsum, A, h0 if h0 is not None else state, carry, dim, nstate, nseg, HAS_INIT=h0 is not None,
        CHUNK=_CHAIN_CHUNK, num_warps=_CHAIN_WARPS)
    final = torch.empty_like(state)
    scan_kernel[grid](u, delta, A, B, C, D, delta_bias, zz, y, final, carry, dtsum, *ints, WRITE_Y=True,
                      HAS_CARRY=True, **common)
    return y, final[:, -1]
