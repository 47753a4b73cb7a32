"""``hvlm::sparse_attention``: strided or local + global softmax attention as one op (CUDA only).

LocalGlobalAttention calls it for CUDA inference in half precision (``impl='auto'`` or
``'triton'``), StridedAttention with ``impl='triton'``; it wraps the Triton kernel of
``hvlm_export.ops.sparse_attention_triton`` as a triton_op (``hvlm_export.ops.triton_backed``:
torch.compile launches the kernel from Inductor's generated code; a fake implementation
gives the output shape). There is no CPU kernel and no autograd:
training, export, padding masks and other devices use the layers' torch paths, which compute
the same function and are tested against it.
"""

from __future__ import annotations

import torch

from hvlm_export.ops.triton_backed import TRITON_AVAILABLE, direct_launch_ok, require_kernel, triton_backed_op

__all__ = ["sparse_attention", "sparse_attention_op", "MAX_GROUPS", "MAX_HEAD_DIM", "MAX_GLOBAL"]

#: the kernel's grid axis of (group, batch, head) programs is limited to 65535 by CUDA
MAX_GROUPS = 65535
#: most global tokens the kernel holds in one tile (more use the torch path)
MAX_GLOBAL = 64
#: widest head the kernel keeps in registers (wider heads use the layers' torch paths)
MAX_HEAD_DIM = 128

if TRITON_AVAILABLE:  # named at module level so that torch finds the op's kernel (triton_backed)
    from hvlm_export.ops.sparse_attention_triton import sparse_attention_triton


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, global_k: torch.Tensor | None,
                     global_v: torch.Tensor | None, stride: int, radius: int, causal: bool,
                     scale: float) -> torch.Tensor:
    """The op (see ``sparse_attention_op``); plain eager calls launch the kernel directly,
    since the custom op's dispatch costs tens of microseconds per call, which is what short
    sequences are bound by (docs/BENCHMARKS.md); under torch.compile, tracing or a dispatch
    mode it is the op."""
    if not direct_launch_ok():
        return sparse_attention_op(q, k, v, global_k, global_v, stride, radius, causal, scale)
    require_kernel("hvlm::sparse_attention", q)
    return sparse_attention_triton(q, k, v, global_k, global_v, stride, radius, causal, scale)


@triton_backed_op("hvlm::sparse_attention")
def sparse_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, global_k: torch.Tensor | None,
                     global_v: torch.Tensor | None, stride: int, radius: int, causal: bool,
                     scale: float) -> torch.Tensor:
    """q, k, v (B, L, H, D) float16 / bfloat16 views with contiguous rows; global_k / global_v
    (G, H, D) or None. Query i attends to key j iff (i - j) % stride == 0, and j <= i if
    ``causal``, and |i - j| <= radius if radius >= 0; and to every global key. Returns
    (B, L, H * D). CUDA tensors only (``require_kernel``)."""
    require_kernel("hvlm::sparse_attention", q)
    return sparse_attention_triton(q, k, v, global_k, global_v, stride, radius, causal, scale, traced=True)


@sparse_attention_op.register_fake
def _(q, k, v, global_k, global_v, stride, radius, causal, scale):
    b, length, h, d = q.shape
    return q.new_empty(b, length, h * d)
