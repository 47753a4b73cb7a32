"""SelectiveScan as a TensorRT quickly deployable plugin (``tensorrt.plugin``, TensorRT 10.8+, 11.x).

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the annotations.
"""

import importlib.util
from typing import List, Tuple, Union

import numpy as np
import tensorrt as trt
import tensorrt.plugin as trtp

from hvlm_export.plugins import selective_scan_logic as logic
from hvlm_export.plugins.trt import dtype_name

__all__ = ["register", "PLUGIN_ID"]

PLUGIN_ID = f"{logic.PLUGIN_NAMESPACE}::{logic.PLUGIN_NAME}"


def _desc(
    u: trtp.TensorDesc, delta: trtp.TensorDesc, A: trtp.TensorDesc, B: trtp.TensorDesc, C: trtp.TensorDesc,
    D: trtp.TensorDesc, delta_bias: trtp.TensorDesc, initial_state: trtp.TensorDesc, delta_softplus: int,
) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
    logic.ScanAttrs.from_fields({"delta_softplus": delta_softplus})
    logic.check_input_shapes([_dims(t) for t in (u, delta, A, B, C, D, delta_bias, initial_state)])
    state = trtp.from_shape_expr((u.shape_expr[0], u.shape_expr[1], A.shape_expr[1]), dtype=trt.float32)
    return u.like(), state


def _constant(expr) -> int | None:
    """A shape expression's build-time value, or None (dynamic, or a 'fake' expression that
    TensorRT hands out outside shape calculations). ``constant_value`` is a property in some
    tensorrt.plugin releases and a method in others."""
    if getattr(expr, "is_fake", False) or not expr.is_constant:
        return None
    value = expr.constant_value
    return int(value() if callable(value) else value)


def _dims(desc: trtp.TensorDesc) -> list:
    """Build-time extents: ints where TensorRT knows them, "?" where they are dynamic."""
    return ["?" if _constant(e) is None else _constant(e) for e in desc.shape_expr]


def _autotune(u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus: int,
              outputs) -> List[trtp.AutoTuneCombination]:
    data = "FP32|FP16|BF16"
    # positions: u, delta, A, B, C, D, delta_bias, initial_state, y, last_state
    return [trtp.AutoTuneCombination(f"{data}, {data}, FP32, {data}, {data}, FP32, FP32, FP32, {data}, FP32", "LINEAR")]


def _impl(
    u: trtp.Tensor, delta: trtp.Tensor, A: trtp.Tensor, B: trtp.Tensor, C: trtp.Tensor, D: trtp.Tensor,
    delta_bias: trtp.Tensor, initial_state: trtp.Tensor, delta_softplus: int, outputs: Tuple[trtp.Tensor],
    stream: int,
) -> None:
    import torch

    from hvlm_export.plugins.torch_launch import run_scan

    ins = [torch.as_tensor(t, device="cuda") for t in (u, delta, A, B, C, D, delta_bias, initial_state)]
    outs = [torch.as_tensor(t, device="cuda") for t in outputs]
    run_scan(ins, outs, bool(delta_softplus), stream)


def _aot_impl(
    u: trtp.TensorDesc, delta: trtp.TensorDesc, A: trtp.TensorDesc, B: trtp.TensorDesc, C: trtp.TensorDesc,
    D: trtp.TensorDesc, delta_bias: trtp.TensorDesc, initial_state: trtp.TensorDesc, delta_softplus: int,
    outputs: Tuple[trtp.TensorDesc], tactic: int,
) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
    from hvlm_export.ops.scan_aot import compile_plugin_ptx

    dtype = dtype_name(trt, u.dtype)
    n_state = _constant(A.shape_expr[1])
    if n_state is None:
        raise logic.PluginInputError("the AOT SelectiveScan kernel needs a build-time constant state size N")
    n_block = _next_pow2(n_state)
    try:
        name, ptx, shared, warps = compile_plugin_ptx(dtype, n_block, bool(delta_softplus))
    except ValueError as err:  # a state size whose tiles do not fit the launch's shared memory
        raise logic.PluginInputError(str(err)) from err
    params = trtp.KernelLaunchParams()
    params.grid_x = trtp.cdiv(u.shape_expr[1], warps)  # a warp per channel
    params.grid_y = u.shape_expr[0]
    params.block_x = warps * 32
    params.shared_mem = shared
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (u.shape_expr[1], u.shape_expr[2], A.shape_expr[1])])
    return name.encode(), ptx.encode(), params, extra


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(np.ceil(np.log2(max(n, 1)))))


def register() -> List[str]:
    """Register desc + autotune + JIT impl (+ AOT impl where available); return the routes."""
    trtp.register(PLUGIN_ID)(_desc)
    trtp.autotune(PLUGIN_ID)(_autotune)
    trtp.impl(PLUGIN_ID)(_impl)
    routes = ["qdp"]
    if hasattr(trtp, "aot_impl") and importlib.util.find_spec("triton") is not None:
        trtp.aot_impl(PLUGIN_ID)(_aot_impl)
        routes.append("aot")
    return routes
