"""Optional fused CPU kernel of ``hvlm::selective_scan`` through numba (``pip install hvlm-export[cpu]``).

One compiled loop per (batch, channel) pair, parallel over those pairs (``numba.prange``),
sequential over L, with the N states of the pair in registers: every (B, D, L, N) value is
made, used and dropped in a register, where the torch path of
:func:`hvlm_export.ops.selective_scan.selective_scan_chunked` makes several passes over
(B, D, L/T, N) temporaries. The state, the decay and the C contraction are computed in
float64 (more accurate than the float32 reference loop); y and the final state come back as
float32. The time steps arrive already discretised (bias + softplus, float32, by the caller),
and D / z are applied by the caller too.

The decay exp(delta * A) is an inline branch-free exp (scaling and squaring: a degree-10
Taylor polynomial of x / 256, squared 8 times; relative error < 1e-9) so the loop over N
vectorises; its argument is clamped to [-110, 89], where float32 has already under- or
overflowed (exp(-110) is below the smallest float32 denormal, exp(89) above float32's max).

numba is imported and the kernel compiled (``cache=True``) on the first CPU call, never at
import time of hvlm_export. Without numba, :func:`scan_kernel` returns None and the op keeps
the chunked torch path.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["numba_available", "scan_kernel", "selective_scan_fused"]

#: fastmath flags of the kernel: reassociation lets the C contraction (a sum over N)
#: vectorise; no 'nnan' / 'ninf', so NaN and inf propagate as in the reference.
_FASTMATH = {"reassoc", "contract", "nsz"}

#: the parallel range of the loop: ``range`` until :func:`_compile` binds ``numba.prange``
prange = range


def _scan_loop(u, dt, A, Bt, Ct, h0, y, h_out):  # pragma: no cover - runs compiled by numba
    """u, dt, y: (B, D, L); A: (D, N); Bt, Ct: (B, L, N); h0, h_out: (B, D, N). All float32."""
    nb, nd, length = u.shape
    n = A.shape[1]
    for pair in prange(nb * nd):
        b = pair // nd
        d = pair - b * nd
        h = np.empty(n, np.float64)
        a = np.empty(n, np.float64)
        for k in range(n):
            h[k] = h0[b, d, k]
            a[k] = A[d, k]
        for t in range(length):
            step = np.float64(dt[b, d, t])
            du = step * np.float64(u[b, d, t])
            acc = 0.0
            for k in range(n):
                # exp(step * a[k]) by scaling and squaring (see the module docstring)
                x = min(max(step * a[k], -110.0), 89.0) * 0.00390625
                e = 1.0 + x * (1.0 + x * (0.5 + x * (1.0 / 6 + x * (1.0 / 24 + x * (1.0 / 120 + x * (
                    1.0 / 720 + x * (1.0 / 5040 + x * (1.0 / 40320 + x * (1.0 / 362880 + x / 3628800)))))))))
                e = e * e
                e = e * e
                e = e * e
                e = e * e
                e = e * e
                e = e * e
                e = e * e
                e = e * e
                hk = e * h[k] + du * np.float64(Bt[b, t, k])
                h[k] = hk
                acc += hk * np.float64(Ct[b, t, k])
            y[b, d, t] = acc
        for k in range(n):
            h_out[b, d, k] = h[k]


@functools.cache
def scan_kernel():
    """The compiled kernel (compiled on the first call, cached on disk), or None without numba."""
    try:
        import numba
    except ImportError:
        return None
    return _compile(numba)


def _compile(numba):
    global prange
    prange = numba.prange  # bound here, so that this module imports without numba
    return numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)(_scan_loop)


def numba_available() -> bool:
    """True where numba imports (the kernel itself is compiled on the first scan)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


def selective_scan_fused(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    h0: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """y (B, D, L) without D / z and the final state (B, D, N), both float32, from
    discretised time steps ``dt``; None where numba is not installed (the caller falls back).

    Shapes as in :func:`hvlm_export.ops.selective_scan.check_scan_inputs`; CPU tensors.
    """
    kernel = scan_kernel()
    if kernel is None:
        return None
    b, d, length = u.shape
    n = A.shape[1]
    y = torch.empty(b, d, length, dtype=torch.float32)
    state = torch.empty(b, d, n, dtype=torch.float32)
    start = torch.zeros(b, d, n) if h0 is None else h0
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    try:
        kernel(_numpy(u), _numpy(dt), _numpy(A), _numpy(B.transpose(1, 2)), _numpy(C.transpose(1, 2)),
               _numpy(start), y.numpy(), state.numpy())
    finally:
        numba.set_num_threads(threads)
    return y, state
