"""The CUDA scan kernels compiled for an H100 / H200 (sm_90) with Triton's own ptxas: no GPU
needed, so a compile error, a shared-memory budget overrun or a lost register cap shows up
on any machine with Triton (CI's CPU venv has none: skipped there; tests/gpu runs them)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="Triton is not installed (it ships with CUDA torch builds)")


def _sm90():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", 90, 32)


@pytest.mark.parametrize("dtype, nstate, has_z, has_init", [
    ("float32", 16, True, False), ("float16", 16, True, True), ("bfloat16", 5, False, True), ("float32", 32, True, False)])
@pytest.mark.parametrize("even", [False, True], ids=["masked", "unmasked"])
def test_scan_kernel_compiles_within_the_shared_memory_budget(dtype, nstate, has_z, has_init, even):
    from hvlm_export.ops.scan_config import SMEM_BUDGET, default_config
    from hvlm_export.ops.scan_aot import compile_ahead
    from hvlm_export.ops.selective_scan_triton import scan_kernel

    cfg = default_config(nstate)
    flags = dict(SOFTPLUS=True, HAS_Z=has_z, HAS_INIT=has_init, BLOCK_N=1 << (nstate - 1).bit_length(),
                 ITEMS=cfg.items, NBUF=cfg.buffers, EVEN=even)
    compiled = compile_ahead(scan_kernel, dtype, flags, cfg, target=_sm90(), unit_l_strides=True)
    assert compiled.metadata.shared <= SMEM_BUDGET + 4096  # B / C tiles plus A and layout scratch
    assert (".maxnreg 168" in compiled.asm["ptx"]) == (cfg.maxnreg == 168)


@pytest.mark.parametrize("dtype, nstate", [("float32", 16), ("float16", 1), ("bfloat16", 128)])
def test_plugin_kernel_fits_a_launch_without_opt_in(dtype, nstate):
    """The TensorRT AOT route launches the kernel with at most 48 KiB of dynamic shared memory."""
    from hvlm_export.ops.scan_config import LAUNCH_SMEM_LIMIT, plugin_config
    from hvlm_export.ops.scan_aot import compile_ahead, scan_plugin_kernel

    cfg = plugin_config(nstate)
    flags = {"SOFTPLUS": True, "BLOCK_N": 1 << (nstate - 1).bit_length(), "ITEMS": cfg.items, "NBUF": cfg.buffers}
    compiled = compile_ahead(scan_plugin_kernel, dtype, flags, cfg, target=_sm90())
    assert compiled.metadata.shared <= LAUNCH_SMEM_LIMIT and compiled.metadata.num_warps == cfg.warps


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_plugin_kernel_vectorises_without_knowing_its_addresses(dtype):
    """The AOT kernel is compiled with no assumption on pointers or L (TensorRT hands it any
    buffer); it checks alignment when it runs and rebuilds the checked pointers and row stride
    so that the compiler may use 16-byte vector loads and stores for the unmasked part (on an
    H200: 0.151 against 0.317 ms at L = 8192, fp32; docs/BENCHMARKS.md)."""
    import re

    from hvlm_export.ops.scan_config import plugin_config
    from hvlm_export.ops.scan_aot import compile_ahead, scan_plugin_kernel

    cfg = plugin_config(16)
    flags = {"SOFTPLUS": True, "BLOCK_N": 16, "ITEMS": cfg.items, "NBUF": cfg.buffers}
    ptx = compile_ahead(scan_plugin_kernel, dtype, flags, cfg, target=_sm90()).asm["ptx"]
    assert re.search(r"ld\.global(\.\w+)*\.v4\.b32", ptx) and re.search(r"st\.global(\.\w+)*\.v[24]\.b32", ptx)
