"""The CUDA scan kernels compiled for an H100 / H200 (sm_90) with Triton's own ptxas: no GPU
needed, so a compile error, a shared-memory budget overrun or a lost register cap shows up
on any machine with Triton (CI's CPU venv has none: skipped there; tests/gpu runs them)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="Triton is not installed (it ships with CUDA torch builds)")

_PTRS = ("u_ptr", "delta_ptr", "A_ptr", "B_ptr", "C_ptr", "D_ptr", "bias_ptr", "z_ptr", "y_ptr", "state_ptr",
         "init_ptr")
_INTS = ("dim", "length", "nstate", "su_b", "su_d", "su_t", "sd_b", "sd_d", "sd_t", "sz_b", "sz_d", "sz_t", "sy_b",
         "sy_d", "sy_t", "sB_b", "sB_n", "sB_t", "sC_b", "sC_n", "sC_t")
_DATA = ("u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr")


def _compile(fn, signature, constexprs, cfg):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    options = {"num_warps": cfg.warps, **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {})}
    return triton.compile(GluonASTSource(fn=fn, signature=signature, constexprs=constexprs),
                          target=GPUTarget("cuda", 90, 32), options=options)


@pytest.mark.parametrize("dtype, nstate, has_z, has_init", [
    ("fp32", 16, True, False), ("fp16", 16, True, True), ("bf16", 5, False, True), ("fp32", 32, True, False)])
def test_scan_kernel_compiles_within_the_shared_memory_budget(dtype, nstate, has_z, has_init):
    from hvlm_export.ops.scan_config import SMEM_BUDGET, default_config
    from hvlm_export.ops.selective_scan_triton import scan_kernel

    cfg = default_config(nstate)
    block_n = 1 << (nstate - 1).bit_length()
    unit = {n: 1 for n in _INTS if n.endswith("_t")}  # what a launch specialises for unit L-strides
    signature = {**{p: ("*" + dtype if p in _DATA else "*fp32") for p in _PTRS},
                 **{n: "constexpr" if n in unit else "i32" for n in _INTS}}
    compiled = _compile(scan_kernel, signature, dict(unit, SOFTPLUS=True, HAS_Z=has_z, HAS_INIT=has_init,
                                                      BLOCK_N=block_n, ITEMS=cfg.items, NBUF=cfg.buffers), cfg)
    assert compiled.metadata.shared <= SMEM_BUDGET + 4096  # B / C tiles plus A and layout scratch
    assert (".maxnreg 168" in compiled.asm["ptx"]) == (cfg.maxnreg == 168)


@pytest.mark.parametrize("dtype, nstate", [("float32", 16), ("float16", 1), ("bfloat16", 128)])
def test_plugin_kernel_fits_a_launch_without_opt_in(dtype, nstate):
    """The TensorRT AOT route launches the kernel with at most 48 KiB of dynamic shared memory."""
    from hvlm_export.ops.scan_config import LAUNCH_SMEM_LIMIT, plugin_config
    from hvlm_export.ops.selective_scan_triton import _TRITON_PTR, scan_plugin_kernel

    cfg = plugin_config(nstate)
    p = _TRITON_PTR[dtype]
    signature = {"u_ptr": p, "delta_ptr": p, "A_ptr": "*fp32", "B_ptr": p, "C_ptr": p, "D_ptr": "*fp32",
                 "bias_ptr": "*fp32", "init_ptr": "*fp32", "dim": "i32", "length": "i32", "nstate": "i32",
                 "y_ptr": p, "state_ptr": "*fp32"}
    compiled = _compile(scan_plugin_kernel, signature, {"SOFTPLUS": True, "BLOCK_N": 1 << (nstate - 1).bit_length(),
                                                         "ITEMS": cfg.items, "NBUF": cfg.buffers}, cfg)
    assert compiled.metadata.shared <= LAUNCH_SMEM_LIMIT and compiled.metadata.num_warps == cfg.warps
