"""``hvlm::causal_conv1d_silu``: MambaLayer's causal depthwise conv and SiLU as one op (CUDA).

    out[b, t, d] = silu(bias[d] + sum_k weight[d, 0, k] * x[b, t - K + 1 + k, d])   (x = 0 before t = 0)

x is (B, L, D) in any strides (MambaLayer passes its half of the input projection's
(B, 2 D, L) output, transposed: a view), out is a (B, L, D) tensor in x's dtype: contiguous,
or a view of contiguous (B, D, L) memory when x's steps are its contiguous axis (so a
channel-first caller stays channel-first); arithmetic in float32. The op wraps one Triton
kernel as a triton_op (``hvlm_export.ops.triton_backed``): torch.compile launches the kernel
from Inductor's generated code (a fake implementation gives the shape without Triton). There
is no CPU kernel and no autograd: MambaLayer calls it for CUDA inference only and keeps
``nn.Conv1d`` + SiLU for training, export and other devices, which compute the same function.
"""

from __future__ import annotations

import torch

from hvlm_export.ops.triton_backed import TRITON_AVAILABLE, direct_launch_ok, require_kernel, triton_backed_op

__all__ = ["causal_conv1d_silu", "conv_silu", "conv_output"]


def conv_output(x: torch.Tensor) -> torch.Tensor:
    """The op's output for x (B, L, D): contiguous (B, L, D), or, when x's steps are its
    contiguous axis (a (B, D, L) layout), a (B, L, D) view of contiguous (B, D, L) memory."""
    batch, length, dim = x.shape
    if length > 1 and x.stride(1) == 1 and x.stride(2) != 1:
        return x.new_empty(batch, dim, length).transpose(1, 2)
    return x.new_empty(batch, length, dim)


def conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The op; a plain eager call on CUDA launches the kernel directly (the op's dispatch is
    host time, ``direct_launch_ok``), anything else (torch.compile, tracing) calls the op."""
    if not (x.is_cuda and TRITON_AVAILABLE and direct_launch_ok()):
        return torch.ops.hvlm.causal_conv1d_silu(x, weight, bias)
    return causal_conv1d_silu_triton(x, weight, bias)


if TRITON_AVAILABLE:  # named at module level so that torch finds the op's kernel (triton_backed)
    from hvlm_export.ops.causal_conv_triton import causal_conv1d_silu_triton


@triton_backed_op("hvlm::causal_conv1d_silu")
def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (B, L, D); weight (D, 1, K); bias (D,) or None. Returns (B, L, D) (layout above).
    CUDA tensors only (``require_kernel``)."""
    require_kernel("hvlm::causal_conv1d_silu", x)
    return causal_conv1d_silu_triton(x, weight, bias, traced=True)


@causal_conv1d_silu.register_fake
def _(x, weight, bias):
    return conv_output(x)
