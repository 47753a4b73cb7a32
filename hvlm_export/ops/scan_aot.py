"""The TensorRT AOT plugin's entry point to the CUDA selective scan's Gluon program
(hvlm_export/ops/selective_scan_triton.py), and ahead-of-time compilation of both kernels: the
plugin's PTX, and sm_90 builds without a GPU (tests/ops/test_scan_kernel_compile.py,
benchmarks/scan_sass.py)."""

from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from hvlm_export.ops.scan_config import ScanConfig, plugin_config
from hvlm_export.ops.selective_scan_triton import _initial_carries, _scan_program

__all__ = ["scan_plugin_kernel", "compile_ahead", "compile_plugin_ptx"]

_TRITON_PTR = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
_DATA_PTRS = ("u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr")  # in the data dtype; other pointers fp32


@gluon.jit
def _aligned16(ptr):
    """``ptr``, which the caller has checked is a multiple of 16 bytes, rebuilt so that the
    compiler knows it (vector loads): a JIT launch learns that from Triton's specialisation of
    its arguments, an AOT kernel launched by TensorRT cannot."""
    return gl.multiple_of((ptr.to(gl.int64) // 16 * 16).to(ptr.dtype), 16)


@gluon.jit(do_not_specialize=["dim", "length", "nstate"])  # int64 arithmetic on them, even when 1
def scan_plugin_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, init_ptr,
    dim, length, nstate,
    y_ptr, state_ptr,
    SOFTPLUS: gl.constexpr, BLOCK_N: gl.constexpr, ITEMS: gl.constexpr, NBUF: gl.constexpr,
):
    """The same program for contiguous (B, D, L) / (B, N, L) tensors with an initial state and
    no gate, in the TensorRT AOT plugin's argument order (inputs, ints, outputs); grid
    (ceil(D / W), B). Shapes and addresses are known only when it runs, so it splits L itself,
    as the launcher does: where D and N allow the unmasked form, and L and the addresses allow
    16-byte vector loads (as a JIT launch on torch's tensors does), the whole chunks run
    unmasked and vectorised; the steps after them (all of L otherwise) run masked, from the
    state the first part wrote (or the initial state, copied to the output first)."""
    W: gl.constexpr = gl.num_warps()
    T: gl.constexpr = 32 * ITEMS
    dl, nl = dim.to(gl.int64) * length, nstate.to(gl.int64) * length  # batch strides, past 2**31 allowed
    addresses = (u_ptr.to(gl.int64) | delta_ptr.to(gl.int64) | B_ptr.to(gl.int64) | C_ptr.to(gl.int64)
                 | y_ptr.to(gl.int64))
    unmasked = (dim % W == 0) & (nstate == BLOCK_N) & (length % 16 == 0) & (addresses % 16 == 0)
    head = gl.where(unmasked, length // T * T, 0)  # seen as a multiple of T (aligned prefetches)
    if head > 0:
        row = length // 16 * 16  # = length, seen as a multiple of 16 elements
        dla, nla = dim.to(gl.int64) * row, nstate.to(gl.int64) * row
        u_a, y_a = _aligned16(u_ptr), _aligned16(y_ptr)
        _scan_program(u_a, _aligned16(delta_ptr), A_ptr, _aligned16(B_ptr), _aligned16(C_ptr), D_ptr, bias_ptr, u_a,
                      y_a, state_ptr, init_ptr, dim, head, nstate, dla, row, 1, dla, row, 1, dla, row, 1, dla, row, 1,
                      nla, row, 1, nla, row, 1, SOFTPLUS, False, True, BLOCK_N, ITEMS, NBUF, True)
    else:
        pid_b = gl.program_id(1).to(gl.int64)
        carry, nc, dc, jc, cmask, _ = _initial_carries(A_ptr, init_ptr, pid_b, gl.program_id(0) * W, dim, nstate, W,
                                                       BLOCK_N, True)
        gl.store(state_ptr + (pid_b * dim + dc) * nstate + nc + jc * 0, carry, mask=cmask & (jc == 0))
    if head < length:
        gl.thread_barrier()  # the state entering the tail (written by lane 0 of each channel's warp) is visible
        _scan_program(u_ptr + head, delta_ptr + head, A_ptr, B_ptr + head, C_ptr + head, D_ptr, bias_ptr, u_ptr,
                      y_ptr + head, state_ptr, state_ptr, dim, length - head, nstate, dl, length, 1, dl, length, 1,
                      dl, length, 1, dl, length, 1, nl, length, 1, nl, length, 1, SOFTPLUS, False, True, BLOCK_N,
                      ITEMS, NBUF, False)


def compile_ahead(kernel, dtype: str, constexprs: dict, cfg: ScanConfig, target=None, unit_l_strides: bool = False):
    """Compile ``scan_kernel`` or ``scan_plugin_kernel`` (flags ``constexprs``) for ``target``
    (a ``GPUTarget``; None: the current GPU). Pointers u, delta, B, C, z, y of ``dtype``
    ('float32', 'float16' or 'bfloat16'), the others float32; integers int32, or with
    ``unit_l_strides`` the strides along L fixed to 1, as a launch on L-contiguous tensors. No
    assumption on alignment (a JIT launch gets one from Triton's specialisation)."""
    from triton.experimental.gluon._runtime import GluonASTSource

    signature = {}
    for param in kernel.params:
        if param.is_constexpr:
            continue
        if param.name.endswith("_ptr"):
            signature[param.name] = _TRITON_PTR[dtype if param.name in _DATA_PTRS else "float32"]
        elif unit_l_strides and param.name.endswith("_t"):
            signature[param.name], constexprs = "constexpr", {**constexprs, param.name: 1}
        else:
            signature[param.name] = "i32"
    options = {"num_warps": cfg.warps, **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {})}
    return triton.compile(GluonASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=target,
                          options=options)


def compile_plugin_ptx(dtype: str, block_n: int, delta_softplus: bool) -> tuple[str, str, int, int]:
    """Compile ``scan_plugin_kernel`` to PTX for the TensorRT AOT plugin (current GPU).

    Returns (kernel name, PTX, shared memory bytes, warps). ``dtype`` is the dtype of u,
    delta, B, C and y ('float32', 'float16' or 'bfloat16'); ``block_n`` a power of two >= N.
    """
    cfg = plugin_config(block_n)
    constexprs = {"SOFTPLUS": bool(delta_softplus), "BLOCK_N": block_n, "ITEMS": cfg.items, "NBUF": cfg.buffers}
    compiled = compile_ahead(scan_plugin_kernel, dtype, constexprs, cfg)
    return compiled.metadata.name, compiled.asm["ptx"], compiled.metadata.shared, compiled.metadata.num_warps
