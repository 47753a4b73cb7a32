"""CUDA path of ``hvlm::selective_scan``: one Gluon (Triton) program, one pass over L.

Glossary: B batch, D channels, L length, N state size (power-of-two block ``BLOCK_N``),
W warps per program, ITEMS steps per lane (``ScanConfig.items``), T = 32 ITEMS steps per chunk.

Design (benchmarks/scan_tuning.py measured it against the previous two-pass kernel, now in
benchmarks/scan_variants.py; numbers in docs/BENCHMARKS.md):

* **Time across the lanes.** A warp owns one channel of one batch row and walks L in chunks
  of T steps; lane j holds steps j ITEMS .. (j + 1) ITEMS - 1 of the chunk. For each state n
  the lane runs its ITEMS steps from zero (h <- a h + b, a = exp(delta A), b = delta u B),
  lane 0 folds in the state that enters the chunk, the 32 lanes' (total decay, end state)
  pairs are scanned with warp shuffles (5 levels, the last without the decay), giving each
  lane's true end state, and the lane reruns its steps from the state its left neighbour
  ends in, adding C h to y. The exponential is taken once per (d, n, t) (the two-pass
  kernel took it twice) and there is no second pass, chain kernel or carry tensor in memory.
  A lane's run through its steps is ``gl.associative_scan`` along an axis held entirely by
  one thread, which Triton lowers as a left fold in order; its combine (``_chain``) relies on
  that and is not associative.
* **Every state in registers.** The N states are unrolled (N <= 16; wider N runs them in a
  loop), so their chains interleave; the carries between chunks stay in registers (each lane
  a copy).
* **Staging.** B and C (shared by the program's W channels) go to shared memory as float32,
  by cp.async (16-bit ones through registers: cp.async moves 4 bytes or more), the next
  chunk's while this one runs (two buffers), swizzled so that each lane's ITEMS steps are one
  conflict-free 16-byte read; u, delta and a 16-bit z are loaded a chunk ahead into registers,
  a float32 z in its own chunk (ptxas issues it near the gate, leaving its registers free
  through the states: 7 % faster in fp32, 4 % slower in fp16, H200). Softplus(delta + bias),
  delta u, D u and the silu(z) gate are applied in registers; y is written once, coalesced.
* **Unmasked form** (``EVEN``): where D is a multiple of W and N a power of two, the whole
  chunks run without bounds masks (the last one's prefetch loads itself again): a 17 % shorter
  chunk loop, no spills. The steps after them, and other shapes, take the masked form (for the
  tail, a second launch from the first one's end state). The TensorRT plugin's kernel makes the
  same split inside one launch (``hvlm_export.ops.scan_aot.scan_plugin_kernel``).

Inputs are read in place when their steps are adjacent in memory ((B, rows, L) memory, what
MambaLayer's CUDA path produces); the launcher copies other layouts to that one first (on an
H200 at L = 8192, strided reads took 0.49 ms against 0.16 ms, a copy about 0.04 ms per tensor).

Numerics: float32 state and arithmetic whatever the input dtype (fp16 / bf16 are read
natively); exp2 / log2 are the hardware's approximate ones (``ex2.approx.ftz``: decays below
2^-126 flush to zero), softplus through them has an absolute error of ~1e-7.

The TensorRT AOT plugin launches the same program (``scan_aot.scan_plugin_kernel``): one kernel.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp

from hvlm_export.ops.scan_config import MAX_GRID_Y, ScanConfig, default_config, plugin_config

__all__ = ["selective_scan_triton", "ScanConfig", "default_config", "scan_kernel", "plugin_config"]

_LOG2E, _LN2 = gl.constexpr(1.4426950408889634), gl.constexpr(0.6931471805599453)


@gluon.jit
def _ex2(x):
    return gl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def _softplus(x):
    # F.softplus (threshold 20), e^x below -15; hardware exp2 / log2 (absolute error ~1e-7)
    e = gl.exp2(x * _LOG2E)
    log2 = gl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [1.0 + e], dtype=gl.float32,
                                     is_pure=True, pack=1)
    return gl.where(x > 20.0, x, gl.where(x < -15.0, e, log2 * _LN2))


@triton.constexpr_function
def _shfl_up_asm(offset):
    return f"shfl.sync.up.b32 $0, $1, {offset}, 0, -1;"


@gluon.jit
def _shfl_up(x, OFFSET: gl.constexpr):
    """The value of the lane OFFSET below (a lane below OFFSET keeps its own)."""
    return gl.inline_asm_elementwise(_shfl_up_asm(OFFSET), "=r,r", [x], dtype=gl.float32, is_pure=True, pack=1)


@gluon.jit
def _from_last_lane(x):
    return gl.inline_asm_elementwise("shfl.sync.idx.b32 $0, $1, 31, 31, -1;", "=r,r", [x], dtype=gl.float32,
                                     is_pure=True, pack=1)


@gluon.jit
def _chain(a1, b1, a2, b2):
    """One more step, h -> a2 h + b2 (a left fold over a lane's own steps; not associative)."""
    return a2, b1 * a2 + b2


@gluon.jit
def _last(a1, b1, a2, b2):
    return a2, b2


@triton.constexpr_function
def _tile_layout(warps, items):
    """Layout of a (rows, 32, ITEMS) tile of an L-contiguous tensor (step = lane ITEMS + item):
    each thread's ITEMS consecutive steps, one vector load."""
    return gl.BlockedLayout([1, 1, items], [1, 32, 1], [warps, 1, 1], [2, 1, 0])


@triton.constexpr_function
def _staging_layout(rank, items, itemsize):
    """Row-major (.., 32, ITEMS) staging of B / C; the 16-byte vectors of a row are XOR-swizzled
    so that 8 lanes reading one vector each hit 8 different bank groups."""
    vec, per_lane = max(1, 16 // itemsize), max(1, items * itemsize // 16)
    order = [2, 1, 0] if rank == 3 else [1, 0]
    if per_lane == 1:
        return gl.SwizzledSharedLayout(vec, 1, 1, order)
    return gl.SwizzledSharedLayout(vec, max(1, 8 // per_lane), per_lane, order)


@gluon.jit
def _tile_offsets(s_row, s_t, row0, t0, nrows, length, ROWS: gl.constexpr, ITEMS: gl.constexpr, L: gl.constexpr):
    """int64 offsets and in-bounds mask of the (ROWS, 32, ITEMS) tile at (row0, t0)."""
    r = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, gl.SliceLayout(2, L)))
    j = gl.arange(0, 32, layout=gl.SliceLayout(0, gl.SliceLayout(2, L)))
    i = gl.arange(0, ITEMS, layout=gl.SliceLayout(0, gl.SliceLayout(1, L)))
    r3 = gl.expand_dims(gl.expand_dims(r, 1), 2)
    t3 = t0 + gl.expand_dims(gl.expand_dims(j, 0), 2) * ITEMS + gl.expand_dims(gl.expand_dims(i, 0), 1)
    return r3.to(gl.int64) * s_row + t3.to(gl.int64) * s_t, (r3 < nrows) & (t3 < length)


@gluon.jit
def _fetch(base, s_row, s_t, row0, t0, nrows, length, ROWS: gl.constexpr, ITEMS: gl.constexpr,
           EVEN: gl.constexpr = False):
    """Issue the load of a (ROWS, 32, ITEMS) tile in its dtype (zeros outside the tensor)."""
    L: gl.constexpr = _tile_layout(gl.num_warps(), ITEMS)
    offsets, mask = _tile_offsets(s_row, s_t, row0, t0, nrows, length, ROWS, ITEMS, L)
    return gl.load(base + offsets, mask=None if EVEN else mask, other=None if EVEN else 0.0)


@gluon.jit
def _stage_bc(s_b, s_c, b_base, c_base, sB_n, sB_t, sC_n, sC_t, t0, nstate, length, BLOCK_N: gl.constexpr,
              ITEMS: gl.constexpr, EVEN: gl.constexpr = False):
    """The chunk's B and C tiles into one float32 staging buffer: cp.async (one commit group)
    for float32 inputs, a load and store for 16-bit ones."""
    L: gl.constexpr = _tile_layout(gl.num_warps(), ITEMS)
    b_offsets, b_mask = _tile_offsets(sB_n, sB_t, 0, t0, nstate, length, BLOCK_N, ITEMS, L)
    c_offsets, c_mask = _tile_offsets(sC_n, sC_t, 0, t0, nstate, length, BLOCK_N, ITEMS, L)
    if EVEN:  # every row and step of the tiles is in the tensors
        b_mask, c_mask = None, None
    if b_base.dtype.element_ty.primitive_bitwidth == 32:
        cp.async_copy_global_to_shared(s_b, b_base + b_offsets, mask=b_mask)
        cp.async_copy_global_to_shared(s_c, c_base + c_offsets, mask=c_mask)
    else:
        fill: gl.constexpr = None if EVEN else 0.0  # a load takes `other` only with a mask
        s_b.store(gl.load(b_base + b_offsets, mask=b_mask, other=fill).to(gl.float32))
        s_c.store(gl.load(c_base + c_offsets, mask=c_mask, other=fill).to(gl.float32))
    cp.commit_group()


@gluon.jit
def _state_chunk(n, buf, dt, du, dsum, y, carry, nc, s_a, s_b, s_c, item, lane, BLOCK_N: gl.constexpr):
    """State n over the chunk (module docstring): y + C h, and the carries with state n's
    updated to its value after the chunk."""
    LX: gl.constexpr = item.type.layout
    L2: gl.constexpr = gl.SliceLayout(2, LX)
    a2 = gl.expand_dims(s_a.index(n).load(L2), 2)  # (W, 1, 1): A log2(e)
    b_row = gl.expand_dims(s_b.index(buf * BLOCK_N + n).load(gl.SliceLayout(0, LX)), 0)
    c_row = gl.expand_dims(s_c.index(buf * BLOCK_N + n).load(gl.SliceLayout(0, LX)), 0)
    h_in = gl.convert_layout(gl.sum(gl.where(nc == n, carry, 0.0), axis=2), L2)  # (W, 32): entering the chunk
    a = _ex2(dt * a2)
    b = du * b_row
    _, h = gl.associative_scan((a, b), 2, _chain)  # the lane's steps from zero
    _, lane_end = gl.reduce((a, h), 2, _last)
    # inclusive scan over the lanes of (decay, end state) pairs: h -> decay h + end
    # lane 0 folds in the state entering the chunk, so the inclusive scan over the lanes of
    # (decay, end state) pairs gives each lane's true end state; the last level needs no decay
    dec = _ex2(dsum * gl.sum(a2, axis=2))
    end = gl.where(lane == 0, lane_end + dec * h_in, lane_end)
    for k in gl.static_range(5):
        end_below = _shfl_up(end, 1 << k)
        take = lane >= (1 << k)
        if k < 4:
            dec_below = _shfl_up(dec, 1 << k)
            end = gl.where(take, end_below * dec + end, end)
            dec = gl.where(take, dec_below * dec, dec)
        else:
            end = gl.where(take, end_below * dec + end, end)
    entering = gl.expand_dims(gl.where(lane == 0, h_in, _shfl_up(end, 1)), 2)  # the state entering the lane's steps
    b = gl.where(item == 0, b + a * entering, b)
    _, h = gl.associative_scan((a, b), 2, _chain)
    out = gl.expand_dims(gl.convert_layout(_from_last_lane(end), gl.SliceLayout(2, nc.type.layout)), 2)
    return y + c_row * h, gl.where(nc == n, out, carry)


@gluon.jit
def _initial_carries(A_ptr, init_ptr, pid_b, d0, dim, nstate, W: gl.constexpr, BLOCK_N: gl.constexpr,
                     HAS_INIT: gl.constexpr):
    """The carries (W, 32, N) in registers, every lane holding its channel's N states (the
    initial state or zero), their index tensors and mask, and A log2(e) as (N, W, 1) in
    shared memory (read-only: a state's row is one broadcast read)."""
    LCAR: gl.constexpr = gl.BlockedLayout([1, 1, BLOCK_N], [1, 32, 1], [W, 1, 1], [2, 1, 0])
    dc = gl.expand_dims(gl.expand_dims(d0 + gl.arange(0, W, layout=gl.SliceLayout(1, gl.SliceLayout(2, LCAR))), 1), 2)
    jc = gl.expand_dims(gl.expand_dims(gl.arange(0, 32, layout=gl.SliceLayout(0, gl.SliceLayout(2, LCAR))), 0), 2)
    nc = gl.expand_dims(gl.expand_dims(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, gl.SliceLayout(1, LCAR))), 0), 1)
    cmask = (dc < dim) & (nc < nstate) & (jc >= 0)
    carry = gl.zeros([W, 32, BLOCK_N], gl.float32, LCAR)
    if HAS_INIT:
        carry = gl.load(init_ptr + (pid_b * dim + dc) * nstate + nc + jc * 0, mask=cmask, other=0.0)
    LA: gl.constexpr = gl.BlockedLayout([1, 1, 1], [32, 1, 1], [1, W, 1], [0, 1, 2])
    na = gl.expand_dims(gl.expand_dims(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, gl.SliceLayout(2, LA))), 1), 2)
    da = gl.expand_dims(gl.expand_dims(d0 + gl.arange(0, W, layout=gl.SliceLayout(0, gl.SliceLayout(2, LA))), 0), 2)
    a_log2 = gl.load(A_ptr + da * nstate + na, mask=(da < dim) & (na < nstate), other=0.0) * _LOG2E
    s_a = gl.allocate_shared_memory(gl.float32, [BLOCK_N, W, 1], gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0]), a_log2)
    s_a = s_a._reinterpret(gl.float32, [BLOCK_N, W, 1], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    return carry, nc, dc, jc, cmask, s_a


@gluon.jit
def _scan_program(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, y_ptr, state_ptr, init_ptr, dim, length, nstate,
    su_b, su_d, su_t, sd_b, sd_d, sd_t, sz_b, sz_d, sz_t, sy_b, sy_d, sy_t, sB_b, sB_n, sB_t, sC_b, sC_n, sC_t,
    SOFTPLUS: gl.constexpr, HAS_Z: gl.constexpr, HAS_INIT: gl.constexpr, BLOCK_N: gl.constexpr, ITEMS: gl.constexpr,
    NBUF: gl.constexpr, EVEN: gl.constexpr = False,
):
    """W channels (a warp each) of one batch row over the whole L (module docstring); every
    (B, rows, L) tensor has unit stride along L."""
    W: gl.constexpr = gl.num_warps()
    LX: gl.constexpr = gl.BlockedLayout([1, 1, ITEMS], [1, 32, 1], [W, 1, 1], [2, 1, 0])  # (channel, lane, step)
    pid_b = gl.program_id(1).to(gl.int64)
    d0 = gl.program_id(0) * W
    lane = gl.expand_dims(gl.arange(0, 32, layout=gl.SliceLayout(0, gl.SliceLayout(2, LX))), 0)
    item = gl.expand_dims(gl.expand_dims(gl.arange(0, ITEMS, layout=gl.SliceLayout(0, gl.SliceLayout(1, LX))), 0), 1)
    d3 = gl.expand_dims(gl.expand_dims(d0 + gl.arange(0, W, layout=gl.SliceLayout(1, gl.SliceLayout(2, LX))), 1), 2)
    bias = gl.load(bias_ptr + d3, mask=d3 < dim, other=0.0)
    Dv = gl.load(D_ptr + d3, mask=d3 < dim, other=0.0)
    carry, nc, dc, jc, cmask, s_a = _initial_carries(A_ptr, init_ptr, pid_b, d0, dim, nstate, W, BLOCK_N, HAS_INIT)
    SH3: gl.constexpr = _staging_layout(3, ITEMS, 4)  # B / C staging (NBUF, N, 32, ITEMS) and its row view
    SH2: gl.constexpr = _staging_layout(2, ITEMS, 4)
    s_b4 = gl.allocate_shared_memory(gl.float32, [NBUF, BLOCK_N, 32, ITEMS], SH3)
    s_c4 = gl.allocate_shared_memory(gl.float32, [NBUF, BLOCK_N, 32, ITEMS], SH3)
    s_b = s_b4._reinterpret(gl.float32, [NBUF * BLOCK_N, 32, ITEMS], SH2)
    s_c = s_c4._reinterpret(gl.float32, [NBUF * BLOCK_N, 32, ITEMS], SH2)
    u_base, d_base, z_base = u_ptr + pid_b * su_b, delta_ptr + pid_b * sd_b, z_ptr + pid_b * sz_b
    b_base, c_base = B_ptr + pid_b * sB_b, C_ptr + pid_b * sC_b
    _stage_bc(s_b4.index(0), s_c4.index(0), b_base, c_base, sB_n, sB_t, sC_n, sC_t, 0, nstate, length, BLOCK_N, ITEMS, EVEN)
    u_raw = _fetch(u_base, su_d, su_t, d0, 0, dim, length, W, ITEMS, EVEN)
    d_raw = _fetch(d_base, sd_d, sd_t, d0, 0, dim, length, W, ITEMS, EVEN)
    Z_AHEAD: gl.constexpr = z_ptr.dtype.element_ty.primitive_bitwidth < 32  # module docstring, staging
    if HAS_Z and Z_AHEAD:
        z_raw = _fetch(z_base, sz_d, sz_t, d0, 0, dim, length, W, ITEMS, EVEN)
    T: gl.constexpr = 32 * ITEMS
    for t0 in range(0, length, T):
        buf = (t0 // T) % NBUF
        t_next = t0 + T
        if EVEN:  # no masks: the last chunk prefetches itself again (in bounds, unused)
            t_next = gl.minimum(t_next, length - T)
        u = gl.convert_layout(u_raw.to(gl.float32), LX)
        dt = gl.convert_layout(d_raw.to(gl.float32), LX) + bias
        if SOFTPLUS:
            dt = _softplus(dt)
        if not EVEN:
            dt = gl.where((d3 < dim) & (t0 + gl.expand_dims(lane, 2) * ITEMS + item < length), dt, 0.0)  # pad: decay 1
        du, y, dsum = dt * u, Dv * u, gl.sum(dt, axis=2)
        if NBUF == 2:
            _stage_bc(s_b4.index(1 - buf), s_c4.index(1 - buf), b_base, c_base, sB_n, sB_t, sC_n, sC_t, t_next,
                      nstate, length, BLOCK_N, ITEMS, EVEN)
            cp.wait_group(1)
        else:
            cp.wait_group(0)
        gl.thread_barrier()  # every thread's copies of this chunk's B and C have landed
        u_raw = _fetch(u_base, su_d, su_t, d0, t_next, dim, length, W, ITEMS, EVEN)
        d_raw = _fetch(d_base, sd_d, sd_t, d0, t_next, dim, length, W, ITEMS, EVEN)
        if HAS_Z and Z_AHEAD:  # 16-bit z: a chunk ahead, as u and delta
            z_cur = z_raw
            z_raw = _fetch(z_base, sz_d, sz_t, d0, t_next, dim, length, W, ITEMS, EVEN)
        elif HAS_Z:  # float32 z: this chunk's, issued by ptxas near the gate (no registers held)
            z_cur = _fetch(z_base, sz_d, sz_t, d0, t0, dim, length, W, ITEMS, EVEN)
        if BLOCK_N <= 16:
            for n in gl.static_range(BLOCK_N):
                y, carry = _state_chunk(n, buf, dt, du, dsum, y, carry, nc, s_a, s_b, s_c, item, lane, BLOCK_N)
        else:
            for n in range(BLOCK_N):
                y, carry = _state_chunk(n, buf, dt, du, dsum, y, carry, nc, s_a, s_b, s_c, item, lane, BLOCK_N)
        gl.thread_barrier()  # every thread is done with this chunk's buffer
        if NBUF == 1:
            _stage_bc(s_b4.index(0), s_c4.index(0), b_base, c_base, sB_n, sB_t, sC_n, sC_t, t_next, nstate, length,
                      BLOCK_N, ITEMS, EVEN)
        if HAS_Z:
            z = gl.convert_layout(z_cur.to(gl.float32), LX)
            y = y * (z / (1.0 + gl.exp2(-z * _LOG2E)))  # silu
        LY: gl.constexpr = _tile_layout(W, ITEMS)
        offsets, mask = _tile_offsets(sy_d, sy_t, d0, t0, dim, length, W, ITEMS, LY)
        gl.store(y_ptr + pid_b * sy_b + offsets, gl.convert_layout(y, LY).to(y_ptr.dtype.element_ty),
                 mask=None if EVEN else mask)
    cp.wait_group(0)
    gl.store(state_ptr + (pid_b * dim + dc) * nstate + nc + jc * 0, carry, mask=cmask & (jc == 0))


@gluon.jit
def scan_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, y_ptr, state_ptr, init_ptr, dim, length, nstate,
    su_b, su_d, su_t, sd_b, sd_d, sd_t, sz_b, sz_d, sz_t, sy_b, sy_d, sy_t, sB_b, sB_n, sB_t, sC_b, sC_n, sC_t,
    SOFTPLUS: gl.constexpr, HAS_Z: gl.constexpr, HAS_INIT: gl.constexpr, BLOCK_N: gl.constexpr, ITEMS: gl.constexpr,
    NBUF: gl.constexpr, EVEN: gl.constexpr = False,
):
    """Grid (channel blocks of W, batch rows)."""
    _scan_program(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, y_ptr, state_ptr, init_ptr, dim,
                  length, nstate, su_b, su_d, su_t, sd_b, sd_d, sd_t, sz_b, sz_d, sz_t, sy_b, sy_d, sy_t, sB_b, sB_n,
                  sB_t, sC_b, sC_n, sC_t, SOFTPLUS, HAS_Z, HAS_INIT, BLOCK_N, ITEMS, NBUF, EVEN)


def _unit_l_stride(t: torch.Tensor) -> torch.Tensor:
    """t (B, rows, L) itself when its steps are adjacent in memory (any row / batch strides),
    else an L-contiguous copy: the kernel reads each lane's steps as one vector."""
    return t if t.shape[2] <= 1 or t.stride(2) == 1 else t.contiguous()


def _launch(tensors, start, stop, h0, state, even, grid_x, A, D, delta_bias, flags):
    """Steps [start, stop) of (u, delta, B, C, z, y) from h0 (None: zero) into ``state``: a
    kernel per 65535 batch rows (the grid's y limit), no views where one launch covers all."""
    views = tensors if stop - start == tensors[0].shape[2] else [t[..., start:stop] for t in tensors]
    whole, batch = [*views, state, h0 if h0 is not None else state], state.shape[0]
    for b0 in range(0, batch, MAX_GRID_Y):
        t = whole if batch <= MAX_GRID_Y else [x[b0:b0 + MAX_GRID_Y] for x in whole]
        strides = (*t[0].stride(), *t[1].stride(), *t[4].stride(), *t[5].stride(), *t[2].stride(), *t[3].stride())
        scan_kernel[(grid_x, t[0].shape[0])](
            t[0], t[1], A, t[2], t[3], D, delta_bias, t[4], t[5], t[6], t[7], state.shape[1], stop - start,
            A.shape[1], *strides, HAS_INIT=h0 is not None, EVEN=even, **flags)


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
    """Run the scan with the Gluon kernel; same contract as ``selective_scan_ref``. Inputs are
    read in place or copied as the module docstring says; y has u's layout (``empty_like(u)``)."""
    batch, dim, length = u.shape
    nstate = A.shape[1]
    y = torch.empty_like(u)  # the op's contract (and its fake's, and the CPU path's): y in u's layout
    out = y if length <= 1 or y.stride(2) == 1 else torch.empty(batch, dim, length, device=u.device, dtype=u.dtype)
    u, delta, B, C = (_unit_l_stride(t) for t in (u, delta, B, C))
    C = C if C.dtype == B.dtype else C.to(B.dtype)  # the kernel stages both as B's dtype says
    zz = _unit_l_stride(z) if z is not None else u
    A, D, delta_bias = (t.contiguous().float() for t in (A, D, delta_bias))
    h0 = initial_state.contiguous().float() if initial_state is not None else None
    cfg = config or default_config(nstate)
    state = torch.empty(batch, dim, nstate, device=u.device, dtype=torch.float32)
    if length == 0 or batch == 0 or dim == 0:
        return y, (h0.clone() if h0 is not None else state.zero_())
    block_n = triton.next_power_of_2(nstate)
    flags = dict(SOFTPLUS=bool(delta_softplus), HAS_Z=z is not None, BLOCK_N=block_n, ITEMS=cfg.items,
                 NBUF=cfg.buffers, num_warps=cfg.warps, **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}))
    # the whole chunks in the unmasked form where D and N allow it, the rest (masked) from their end state
    head = length - length % cfg.chunk() if dim % cfg.warps == 0 and nstate == block_n else 0
    tensors, grid_x = [u, delta, B, C, zz, out], triton.cdiv(dim, cfg.warps)
    if 0 < head < length:
        mid = torch.empty_like(state)
        _launch(tensors, 0, head, h0, mid, True, grid_x, A, D, delta_bias, flags)
        _launch(tensors, head, length, mid, state, False, grid_x, A, D, delta_bias, flags)
    else:
        _launch(tensors, 0, length, h0, state, head == length, grid_x, A, D, delta_bias, flags)
    if out is not y:
        y.copy_(out)
    return y, state
