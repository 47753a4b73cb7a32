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

#: scaled projections of recent eager calls (``_scaled``): key -> (a view of the projection, W D^-1/4)
_SCALED: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_SCALED_SIZE = 8

if TRITON_AVAILABLE:  # named at module level so that torch finds the op's kernels (triton_backed)
    from hvlm_export.ops.favor_triton import favor_softmax_triton, scale_projection


def favor_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor,
                  eps: float, causal: bool = False, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The op (see ``favor_softmax_op``); plain eager calls launch the kernels directly (the
    custom op's dispatch is host time short sequences pay), else it is the op
    (``direct_launch_ok``)."""
    if not direct_launch_ok():
        return favor_softmax_op(q, k, v, projection, eps, causal, key_mask)
    require_kernel("hvlm::favor_softmax", q)
    _check_length(q)
    return favor_softmax_triton(q, k, v, projection, eps, causal, key_mask, scaled=_scaled(projection, q))


def _scaled(projection: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The kernels' pre-scaled W (favor_triton.scale_projection) for eager calls, kept while
    ``projection`` is unchanged: the same storage, dtype, shape and autograd version (a redraw,
    ``load_state_dict`` or ``.to()`` moves one of them; a write through ``.data`` does not, as
    for every cache keyed on parameters). Each entry holds a view of its projection's storage, so
    that storage is never freed and reused under a cached key; at most ``_SCALED_SIZE`` entries,
    the oldest dropped first. Saves a launch per call, which short sequences pay in host time."""
    key = (projection.data_ptr(), projection._version, projection.dtype, projection.device,
           tuple(projection.shape), projection.stride(), q.dtype, q.shape[-1])
    hit = _SCALED.get(key)
    if hit is None:
        while len(_SCALED) >= _SCALED_SIZE:
            _SCALED.pop(next(iter(_SCALED)), None)
        hit = _SCALED[key] = (projection.detach(), scale_projection(projection, q.shape[-1], q.dtype))
    return hit[1]


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
