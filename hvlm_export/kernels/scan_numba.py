"""The fused CPU selective scan as a numba kernel: numpy in, numpy out, no torch.

Used by the op's CPU kernel (:mod:`hvlm_export.ops.selective_scan_cpu`) and by the ONNX
Runtime kernel of ``hvlm::SelectiveScan`` (:mod:`hvlm_export.runtime.ort_scan_kernel`), which
must not import torch. Optional: numba (``pip install hvlm-export[cpu]``) is imported and the
kernel compiled (``cache=True``) on the first call, never when hvlm_export is imported.

One compiled loop per (batch, channel) pair, parallel over the pairs (``numba.prange``),
sequential over L, with the pair's N states in registers, so no (B, D, L, N) value ever
reaches memory. State, decay and the C contraction are computed in float64 (more accurate
than the float32 reference loop). The decay exp(delta * A) is an inline branch-free exp
(scaling and squaring: a degree-10 Taylor polynomial of x / 256, squared 8 times; relative
error < 1e-9) so that the loop over N vectorises; its argument is clamped to [-110, 89],
where float32 has already under- or overflowed.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

__all__ = ["KERNEL_LOCK", "numba_available", "scan_kernel", "scan_numpy", "threads_limited"]

#: numba's default 'workqueue' threading layer must not be entered from two threads at once
KERNEL_LOCK = threading.Lock()

#: fastmath flags of the kernel: reassociation lets the C contraction (a sum over N)
#: vectorise; no 'nnan' / 'ninf', so NaN and inf propagate as in the reference.
_FASTMATH = {"reassoc", "contract", "nsz"}

#: the parallel range of the loop: ``range`` until :func:`_compile` binds ``numba.prange``
prange = range


def _scan_loop(u, dt, A, Bt, Ct, Dv, z, has_z, h0, y, h_out):  # pragma: no cover - runs compiled by numba
    """u, dt, z, y: (B, D, L); A: (D, N); Bt, Ct: (B, L, N); Dv: (D,); h0, h_out:
    (B, D, N). All float32. y = (<C, h> + D u) * silu(z) (z only where ``has_z``)."""
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
        skip = np.float64(Dv[d])
        for t in range(length):
            step = np.float64(dt[b, d, t])
            ut = np.float64(u[b, d, t])
            du = step * ut
            acc = 0.0
            for k in range(n):
                hk = _exp(step * a[k]) * h[k] + du * np.float64(Bt[b, t, k])
                h[k] = hk
                acc += hk * np.float64(Ct[b, t, k])
            y[b, d, t] = acc + skip * ut
        if has_z:  # a loop of its own over L, so that it vectorises
            for t in range(length):
                zt = np.float64(z[b, d, t])
                y[b, d, t] = np.float64(y[b, d, t]) * zt / (1.0 + _exp(-zt))
        for k in range(n):
            h_out[b, d, k] = h[k]


def _exp(x):  # pragma: no cover - runs compiled by numba (inlined)
    """exp(x) in float64 by scaling and squaring, branch-free (see the module docstring)."""
    x = min(max(x, -110.0), 89.0) * 0.00390625
    e = 1.0 + x * (1.0 + x * (0.5 + x * (1.0 / 6 + x * (1.0 / 24 + x * (1.0 / 120 + x * (
        1.0 / 720 + x * (1.0 / 5040 + x * (1.0 / 40320 + x * (1.0 / 362880 + x / 3628800)))))))))
    e = e * e  # eight squarings, unrolled: a loop here would stop the loop over N from vectorising
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    return e * e


def _transpose_loop(src, dst):  # pragma: no cover - runs compiled by numba
    """dst[b, d, t] = src[b, t, d] in 32 x 32 tiles (torch's strided copy is ~4x slower here)."""
    nb, length, nd = src.shape
    tiles_t = (length + 31) // 32
    tiles_d = (nd + 31) // 32
    for tile in prange(nb * tiles_t * tiles_d):
        b = tile // (tiles_t * tiles_d)
        t0 = (tile // tiles_d) % tiles_t * 32
        d0 = tile % tiles_d * 32
        for d in range(d0, min(d0 + 32, nd)):
            for t in range(t0, min(t0 + 32, length)):
                dst[b, d, t] = src[b, t, d]


@functools.cache
def scan_kernel():
    """The compiled scan and transpose kernels (compiled on the first call, cached on disk), or
    None without numba."""
    try:
        import numba
    except ImportError:
        return None
    return _compile(numba)


def _compile(numba):
    global prange, _exp
    # bound here, so that this module imports without numba; the loop calls the compiled _exp
    prange = numba.prange
    # a second compilation (the cache cleared) starts again from the Python function
    _exp = numba.njit(inline="always", fastmath=_FASTMATH)(getattr(_exp, "py_func", _exp))
    jit = numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)
    return jit(_scan_loop), jit(_transpose_loop)


def numba_available() -> bool:
    """True where numba imports (the kernel itself is compiled on the first scan)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True




def threads_limited(threads: int):
    """A context manager: numba's worker threads limited to ``threads`` (its own default is
    every core) while the kernel runs, under :data:`KERNEL_LOCK`."""
    import contextlib

    import numba

    @contextlib.contextmanager
    def limited():
        with KERNEL_LOCK:
            before = numba.get_num_threads()
            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
            try:
                yield
            finally:
                numba.set_num_threads(before)

    return limited()


def scan_numpy(u, dt, A, B, C, D, z, h0, threads: int):
    """The scan of float32 numpy arrays: u, dt (B, D, L) (dt already discretised), A (D, N),
    B, C (B, N, L), D (D,) or None, z (B, D, L) or None, h0 (B, D, N) or None. Returns
    (y (B, D, L) with the D skip and the z gate, final state (B, D, N)), float32; None where
    numba is not installed."""
    kernels = scan_kernel()
    if kernels is None:
        return None
    b, d, length = u.shape
    n = A.shape[1]
    y = np.empty((b, d, length), np.float32)
    state = np.empty((b, d, n), np.float32)

    def c32(a):
        return np.ascontiguousarray(a, dtype=np.float32)

    with threads_limited(threads):
        kernels[0](c32(u), c32(dt), c32(A), c32(np.swapaxes(B, 1, 2)), c32(np.swapaxes(C, 1, 2)),
                   c32(np.zeros(d) if D is None else D), c32(np.zeros((1, 1, 1)) if z is None else z), z is not None,
                   c32(np.zeros((b, d, n)) if h0 is None else h0), y, state)
    return y, state
