"""Ahead-of-time compilation of the CUDA selective scan's Gluon kernels
(hvlm_export/ops/selective_scan_triton.py): the TensorRT AOT plugin's PTX, and sm_90 builds
without a GPU (tests/ops/test_scan_kernel_compile.py, benchmarks/scan_sass.py)."""

from __future__ import annotations

import triton

from hvlm_export.ops.scan_config import ScanConfig, plugin_config
from hvlm_export.ops.selective_scan_triton import scan_plugin_kernel

__all__ = ["compile_ahead", "compile_plugin_ptx"]

_TRITON_PTR = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
_DATA_PTRS = ("u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr")  # in the data dtype; other pointers fp32


def compile_ahead(kernel, dtype: str, constexprs: dict, cfg: ScanConfig, target=None, unit_l_strides: bool = False):
    """Compile ``scan_kernel`` or ``scan_plugin_kernel`` (flags ``constexprs``) for ``target``
    (a ``GPUTarget``; None: the current GPU). Pointers u, delta, B, C, z, y of ``dtype``
    ('float32', 'float16' or 'bfloat16'), the others float32; integers int32, or with
    ``unit_l_strides`` the strides along L fixed to 1, as a launch on L-contiguous tensors."""
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
