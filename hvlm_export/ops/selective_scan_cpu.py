"""The CPU kernels behind ``hvlm::selective_scan`` (inference: the op's forward; its backward
recomputes through the differentiable :func:`hvlm_export.ops.selective_scan.selective_scan_chunked`).

Both take float32 inputs with the time steps already discretised (bias + softplus) and return
y (B, D, L) without the D skip and the z gate, plus the final state (B, D, N), float32:

* :func:`selective_scan_fused` - optional, through numba (``pip install hvlm-export[cpu]``):
  the torch-free kernel of :mod:`hvlm_export.kernels.scan_numba` (a compiled loop per
  (batch, channel) pair, N states in registers, float64 state), compiled on the first CPU
  call, never when hvlm_export is imported.
* :func:`selective_scan_blocked` - plain torch, the fallback without numba: the chunked scan
  of ``selective_scan_chunked`` reorganised for the cache and for few passes: channels in
  blocks of :data:`TORCH_BLOCK` whose (L, block, N) temporaries are reused buffers, exp(delta * A)
  taken once per element, one fused ``addcmul`` per step, and two passes over the chunk
  steps (chunk end states from zero; then, from the true entering states after the carry
  scan, the outputs with the C contraction as a batched matrix-vector product). In-place
  buffers, so no autograd.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hvlm_export.kernels.scan_numba import numba_available, scan_kernel, threads_limited
from hvlm_export.ops.selective_scan import _carry_scan

__all__ = ["TORCH_BLOCK", "TORCH_CHUNK", "numba_available", "scan_kernel", "selective_scan_blocked",
           "selective_scan_fused"]

#: channels per block of the torch path (its (L, block, N) buffers stay in the last-level
#: cache at L = 4096: 16 MiB each) and steps per chunk; measured in docs/benchmarks/issue9/cpu-scan.md
TORCH_BLOCK = 64
TORCH_CHUNK = 64

#: cap on the elements of one (L, block, N) buffer of the torch path; the block shrinks for long or batched inputs
_MAX_BUFFER_ELEMENTS = 1 << 23


def _numpy(t: torch.Tensor, transpose=None) -> np.ndarray:
    """A C-contiguous float32 numpy view (strided reads in the loop over L would cost ~4x); a
    (B, D, L) tensor laid out as (B, L, D) (MambaLayer's delta and z) goes through ``transpose``."""
    t = t.detach().to(torch.float32)
    if transpose is not None and t.dim() == 3 and t.stride(1) == 1 and t.shape[1] > 1 and t.shape[2] > 1:
        out = np.empty(t.shape, np.float32)
        transpose(t.transpose(1, 2).numpy(), out)
        return out
    return t.contiguous().numpy()


def selective_scan_fused(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, h0: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """y (B, D, L) with the D skip and the z gate applied, float32 with the strides of
    ``torch.empty_like(u)``, and the
    final state (B, D, N), float32, from discretised time steps ``dt`` (float32); None where
    numba is not installed (the caller falls back). Shapes as in ``check_scan_inputs``; CPU tensors.
    """
    kernels = scan_kernel()
    if kernels is None:
        return None
    kernel, transpose = kernels
    b, d, _ = u.shape
    n = A.shape[1]
    y = torch.empty(u.shape, dtype=torch.float32)
    state = torch.empty(b, d, n, dtype=torch.float32)
    start = torch.zeros(b, d, n) if h0 is None else h0
    skip = torch.zeros(d) if D is None else D
    gate = torch.zeros(1, 1, 1) if z is None else z
    with threads_limited(torch.get_num_threads()):
        kernel(_numpy(u, transpose), _numpy(dt, transpose), _numpy(A), _numpy(B.transpose(1, 2)),
               _numpy(C.transpose(1, 2)), _numpy(skip), _numpy(gate, transpose), z is not None,
               _numpy(start), y.numpy(), state.numpy())
    like_u = torch.empty_like(u, dtype=torch.float32)  # the strides the op's fake kernel promises
    return (y if like_u.stride() == y.stride() else like_u.copy_(y)), state


def selective_scan_blocked(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    h0: torch.Tensor | None, chunk: int = TORCH_CHUNK, block: int = TORCH_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch fallback (module docstring); the arguments and results of :func:`selective_scan_fused`."""
    b, d, length = u.shape
    n = A.shape[1]
    chunk = max(1, min(chunk, length))
    nc = -(-length // chunk)
    pad = nc * chunk - length

    def steps(x: torch.Tensor) -> torch.Tensor:  # (b, k, L) -> (T, b, nc, k), contiguous per step
        return F.pad(x, (0, pad)).view(b, x.shape[1], nc, chunk).permute(3, 0, 2, 1).contiguous()

    # Padding steps have delta = 0 (decay 1) and delta * u = 0: they carry the state unchanged.
    b_s = steps(B)[:, :, :, None, :]  # (T, b, nc, 1, N)
    c_s = steps(C).reshape(chunk, b * nc, n, 1)
    block = max(1, min(block, d, _MAX_BUFFER_ELEMENTS // max(1, chunk * b * nc * n)))
    buffers = u.new_empty(2, chunk * b * nc * block * n)
    start = u.new_zeros(b, d, n) if h0 is None else h0
    ys, states = [], []
    for first in range(0, d, block):
        sl = slice(first, first + block)
        y, state = _block(steps(dt[:, sl]), steps(dt[:, sl] * u[:, sl]), A[sl], b_s, c_s, start[:, sl], buffers)
        ys.append(y.permute(1, 3, 2, 0).reshape(b, -1, nc * chunk)[..., :length])
        states.append(state)
    return torch.cat(ys, 1), torch.cat(states, 1)


def _block(dt_s, du_s, A, b_s, c_s, start, buffers):
    """One channel block: dt_s, du_s (T, b, nc, k) -> y (T, b, nc, k) and the final state (b, k, N)."""
    chunk, b, nc, k = dt_s.shape
    n = A.shape[1]
    shape, size = (chunk, b, nc, k, n), chunk * b * nc * k * n
    decay_step = torch.mul(dt_s[..., None], A, out=buffers[0, :size].view(shape)).exp_()
    inject = torch.mul(du_s[..., None], b_s, out=buffers[1, :size].view(shape))  # delta * B * u
    h = inject[0].clone()
    for t in range(1, chunk):  # pass 1: every chunk from state 0, for its end state
        h = torch.addcmul(inject[t], decay_step[t], h)
    decay = torch.exp_(dt_s.sum(0)[..., None] * A)  # (b, nc, k, N): over each whole chunk, exponent <= 0
    h[:, 0].addcmul_(decay[:, 0], start)  # the state entering chunk 0 decays through it
    carry = _carry_scan(decay, h, dim=1)  # state at each chunk end
    h = torch.cat([start[:, None], carry[:, :-1]], 1)  # state entering each chunk
    y = dt_s.new_empty(chunk, b * nc, k, 1)
    for t in range(chunk):  # pass 2: from the entering states, with the C contraction
        h = torch.addcmul(inject[t], decay_step[t], h)
        torch.bmm(h.view(b * nc, k, n), c_s[t], out=y[t])
    return y.view(chunk, b, nc, k), carry[:, -1]
