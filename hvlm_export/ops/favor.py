"""``hvlm::favor_softmax``: fused FAVOR+ attention (non-causal or causal) as one op (CUDA only).

PerformerAttention calls it for CUDA inference in half precision (``impl='auto'`` or
``'triton'``); the op wraps the Triton kernels of ``hvlm_export.ops.favor_triton`` as a
triton_op (``hvlm_export.ops.triton_backed``): torch.compile traces through it to the kernels
and the torch glue between them and launches them from Inductor's generated code (a fake
implementation gives the output shape without Triton). There is no CPU kernel and no
autograd: training, export and other devices use the module's torch path, which computes the
same function.
"""

from __future__ import annotations

import torch

from hvlm_export.ops.triton_backed import TRITON_AVAILABLE, direct_launch_ok, require_kernel, triton_backed_op

__all__ = ["favor_softmax", "favor_softmax_op", "TRITON_AVAILABLE", "MAX_LENGTH"]

#: longest sequence the kernels take: their grids hold one program per 64-token block of rows
#: (favor_triton.BLOCK_L) on an axis CUDA limits to 65535 blocks
MAX_LENGTH = 64 * 65535

if TRITON_AVAILABLE:  # named at module level so that torch finds the op's kernels (triton_backed)
    from hvlm_export.ops.favor_triton import favor_softmax_triton, scale_projection  # noqa: F401 (PerformerAttention)


def favor_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor,
                  eps: float, causal: bool = False, key_mask: torch.Tensor | None = None,
                  scaled: torch.Tensor | None = None) -> torch.Tensor:
    """The op (see ``favor_softmax_op``); plain eager calls launch the kernels directly (the
    custom op's dispatch is host time short sequences pay), else it is the op
    (``direct_launch_ok``). ``scaled``: ``scale_projection(projection, D, q.dtype)`` where the
    caller keeps it between calls (PerformerAttention does), used by direct launches."""
    if not direct_launch_ok():
        return favor_softmax_op(q, k, v, projection, eps, causal, key_mask)
    require_kernel("hvlm::favor_softmax", q)
    _check_length(q)
    return favor_softmax_triton(q, k, v, projection, eps, causal, key_mask, scaled=scaled)


def _check_length(q: torch.Tensor) -> None:
    if q.shape[2] > MAX_LENGTH:
        raise ValueError(f"hvlm::favor_softmax takes at most {MAX_LENGTH} tokens (the kernels' grid); got "
                         f"{q.shape[2]}.\nNote: PerformerAttention takes its torch path for longer sequences.")


@triton_backed_op("hvlm::favor_softmax")
def favor_softmax_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor,
                     eps: float, causal: bool = False, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """q, k, v (B, H, L, D) half precision; projection (m, D); key_mask (B, L) bool, which
    tokens may be keys (non-causal only; None: all). Returns (B, L, H * D). CUDA tensors
    only (``require_kernel``)."""
    require_kernel("hvlm::favor_softmax", q)
    _check_length(q)
    return favor_softmax_triton(q, k, v, projection, eps, causal, key_mask, traced=True)


@favor_softmax_op.register_fake
def _(q, k, v, projection, eps, causal=False, key_mask=None):
    b, h, length, d = q.shape
    return q.new_empty(b, length, h * d)
