"""An ONNX Runtime kernel for ``hvlm::SelectiveScan`` (onnxruntime-extensions PyOp), optional.

ONNX Runtime prefers a registered kernel over a node's function body, so with this kernel the
session runs the scan in Python instead of the standard-ops body: through the fused numba
kernel of :mod:`hvlm_export.kernels.scan_numba` where numba is installed (the ``cpu`` extra),
else in numpy one step at a time. It is an independent cross-check of the body (and a
template for a native kernel), not a speed path: measured on a 2-core CPU (Mamba, dim 256,
L = 2048, ``python benchmarks/ort_profile.py mamba --scan-kernel``), the session took 103 ms
with the numba kernel (26 ms of it inside the kernel) and 77 ms with a kernel that returns
zeros, against 55 ms with the body: the op boundary of onnxruntime-extensions (its conversion
of inputs and outputs) costs more than the whole body. Needs ``pip install
onnxruntime-extensions`` (the ``ort-extensions`` extra); imports neither torch nor tensorrt.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from hvlm_export.errors import ArtifactError
from hvlm_export.kernels.scan_numba import scan_numpy

__all__ = ["selective_scan_numpy", "selective_scan_fast", "register_selective_scan_kernel", "kernel_calls"]

#: how often ONNX Runtime has invoked the kernel in this process (the body leaves it at 0)
kernel_calls = [0]


def selective_scan_numpy(u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus: bool):
    """The node's contract in numpy, one step at a time (float32): returns (y, last_state)."""
    dt = delta.astype(np.float32) + delta_bias.astype(np.float32)[:, None]
    if delta_softplus:
        dt = np.where(dt > 20.0, dt, np.log1p(np.exp(np.minimum(dt, 20.0))))
    u32, A32, B32, C32 = (x.astype(np.float32) for x in (u, A, B, C))
    batch, dim, length = u.shape
    h = initial_state.astype(np.float32).copy()
    y = np.empty((batch, dim, length), np.float32)
    for t in range(length):
        h = np.exp(dt[:, :, t, None] * A32) * h + (dt[:, :, t] * u32[:, :, t])[..., None] * B32[:, None, :, t]
        y[:, :, t] = np.einsum("bdn,bn->bd", h, C32[:, :, t])
    y += u32 * D.astype(np.float32)[:, None]
    return y.astype(u.dtype), h


def selective_scan_fast(u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus: bool):
    """The node's contract through the numba kernel (float32 out, in u's dtype), or through
    :func:`selective_scan_numpy` where numba is not installed."""
    dt = delta.astype(np.float32) + delta_bias.astype(np.float32)[:, None]
    if delta_softplus:
        dt = np.where(dt > 20.0, dt, np.log1p(np.exp(np.minimum(dt, 20.0))))
    out = scan_numpy(u, dt, A, B, C, D, None, initial_state, os.cpu_count() or 1)
    if out is None:
        return selective_scan_numpy(u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus)
    return out[0].astype(u.dtype), out[1]


@functools.cache
def register_selective_scan_kernel() -> str:
    """Register the PyOp once; return the custom-ops library path for SessionOptions."""
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError as err:
        raise ArtifactError(
            "the SelectiveScan ONNX Runtime kernel needs onnxruntime-extensions",
            "pip install 'hvlm-export[ort-extensions]', or run without it (the function body is used).",
        ) from err
    f32 = PyCustomOpDef.dt_float

    @onnx_op(
        op_type="hvlm::SelectiveScan",
        inputs=[f32] * 8,
        outputs=[f32, f32],
        attrs={"delta_softplus": PyCustomOpDef.dt_int64, "plugin_namespace": PyCustomOpDef.dt_string,
               "plugin_version": PyCustomOpDef.dt_string},
    )
    def _selective_scan(u, delta, A, B, C, D, delta_bias, initial_state, **attrs):
        kernel_calls[0] += 1
        return selective_scan_fast(u, delta, A, B, C, D, delta_bias, initial_state,
                                   bool(attrs.get("delta_softplus", 0)))

    return get_library_path()
