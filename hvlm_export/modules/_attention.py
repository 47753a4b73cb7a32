"""Helpers shared by the attention mechanisms: argument checks, projections, head reshapes.

Glossary of dimension letters used across hvlm_export.modules:
    B  batch size              L  sequence length (queries)
    M  memory length (keys)    H  number of heads
    E  model width (``dim``)   Dh head width (E // H)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hvlm_export.modules._fused_projections import FusedProjections
from hvlm_export.modules._streaming import Streamable
from hvlm_export.ops.triton_backed import TRITON_AVAILABLE

__all__ = [
    "FUSED_IMPLS",
    "FusedImpl",
    "MultiHeadProjections",
    "check_dropout",
    "check_mask",
    "check_positive_int",
    "check_sequence",
    "kernels_allowed_here",
    "exporting",
    "tracing",
    "zero_padding",
    "merge_heads",
    "split_heads",
]


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``; raise TypeError / ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return value


def check_dropout(value: object) -> float:
    """Return ``value`` as a float in [0, 1); raise TypeError / ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"dropout must be a float in [0, 1), got {value!r}.")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value}.")
    return float(value)


def check_sequence(x: object, dim: int, name: str = "x") -> torch.Tensor:
    """Check that ``x`` is a floating (B, L, dim) tensor with L >= 1.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: wrong rank, wrong last dimension, or an empty sequence.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, L, {dim}), got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}.")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (B, L, {dim}), got rank {x.dim()} shape {tuple(x.shape)}.")
    if x.shape[-1] != dim:
        raise ValueError(f"{name} must have last dimension {dim} (the layer's dim), got {x.shape[-1]}.")
    return x


def check_mask(mask: object, x: torch.Tensor, name: str = "attention_mask") -> torch.Tensor:
    """The padding mask of ``x`` (B, L, E) as a bool (B, L) tensor, True for real tokens.

    Accepts bool, integer or floating masks (nonzero = real token), the convention of
    ``attention_mask`` in transformers and ONNX exports (int64, 1 = real, 0 = padding).
    Padding is expected at the end of each sequence (right padding).

    Raises:
        TypeError: not a tensor, or complex.
        ValueError: not (B, L) with x's batch and length, or on another device.
    """
    want = f"(B, L) = ({x.shape[0]}, {x.shape[1]}), 1 for real tokens and 0 for padding"
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {want}; got {type(mask).__name__}.")
    if mask.is_complex():
        raise TypeError(f"{name} must be a bool, integer or floating tensor, got dtype {mask.dtype}.")
    if mask.dim() != 2 or mask.shape[0] != x.shape[0] or mask.shape[1] != x.shape[1]:
        raise ValueError(f"{name} must have shape {want}; got shape {tuple(mask.shape)}.")
    if mask.device != x.device:
        raise ValueError(f"{name} is on {mask.device} but its input is on {x.device}.\nNote: move it with .to(x.device).")
    return mask if mask.dtype == torch.bool else mask != 0


def zero_padding(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """y (B, L, E) with the padded positions of the bool ``mask`` (B, L) set to 0."""
    return y if mask is None else y.masked_fill(~mask[..., None], 0.0)


def autograd_on(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether this call records a graph for backward (through ``x`` or the layer's weights)."""
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def exporting() -> bool:
    """Whether torch.export (strict or not; ``torch.onnx.export(dynamo=True)`` runs it) is
    tracing this call.

    Reads the flag that ``torch.compiler.is_exporting()`` returns rather than calling it:
    inside torch.compile, Dynamo replaces that *call* by a constant, which some releases set
    to True (torch 2.11, measured on the project's GPU machine: under torch.compile every
    fused kernel was skipped), while the flag itself reads False there and True under both
    kinds of torch.export (torch 2.13, tests/modules/test_sparse.py)."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)


def tracing() -> bool:
    """Whether anything traces, transforms or records this call: torch.compile, torch.export,
    torch.jit, a dispatch mode (make_fx / AOT tracing, FakeTensorMode, FlopCounterMode, ...), a
    torch.func transform (vmap, grad, jvp) or a CUDA graph capture. Then tensors derived from
    parameters are computed in the call, never served from a cache kept between calls: a traced
    graph or a captured CUDA graph must compute them itself (a replay after a weight update
    would read stale or freed memory), and fake or wrapped tensors have no storage to key on."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    functorch = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
    return (torch.compiler.is_compiling() or exporting() or torch.jit.is_tracing()
            or _get_current_dispatch_mode() is not None or functorch()
            or (torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()))


def kernels_allowed_here() -> bool:
    """Whether this call may run a fused Triton kernel as far as tracing goes: eagerly or
    under torch.compile yes (the kernels are custom ops), under torch.export no (an exported
    graph must hold standard ops)."""
    return not exporting()


def fused_cuda_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a fused Triton kernel may serve this call: CUDA inputs, no autograd, Triton
    importable, not under torch.export (kernels_allowed_here). Plain attribute and flag reads
    only, so torch.compile folds it without a graph break."""
    return x.is_cuda and not autograd_on(x, weight) and TRITON_AVAILABLE and kernels_allowed_here()


#: the ``impl`` choices of layers with a fused Triton kernel for CUDA inference
FusedImpl = Literal["auto", "torch", "triton"]
FUSED_IMPLS = ("auto", "torch", "triton")
HALF = (torch.float16, torch.bfloat16)


def check_impl(impl: object, choices: tuple[str, ...] = FUSED_IMPLS) -> str:
    """Return ``impl`` if it is one of ``choices``; raise ValueError naming them otherwise."""
    if impl not in choices:
        raise ValueError(f"Unknown impl {impl!r}.\nNote: valid choices are {', '.join(choices)}.")
    return impl


def use_fused(impl: str, x: torch.Tensor, weight: torch.Tensor, needs: str,
              misfit: Callable[[], str | None] = lambda: None) -> bool:
    """Whether a layer's call runs its fused Triton kernel: ``impl`` 'auto' or 'triton', a
    float16/bfloat16 CUDA input without autograd (fused_cuda_inference), and ``misfit()``
    None (else the layer's own reason why the kernel cannot serve this call). ``misfit`` is
    called only once the rest holds (or to explain an error), so its shape checks never
    guard an exported or CPU graph. ``needs`` names the kernel in the error: 'triton' never
    falls back silently, a call it cannot run is a ValueError saying why."""
    if impl not in ("auto", "triton"):
        return False
    reason = None
    if x.dtype in HALF and fused_cuda_inference(x, weight):
        reason = misfit()
        if reason is None:
            return True
    if impl == "triton":
        grad = autograd_on(x, weight)
        reason = misfit() if reason is None else reason
        raise ValueError(
            f"impl='triton' runs {needs} on float16/bfloat16 CUDA inputs without autograd "
            f"(Triton installed: {TRITON_AVAILABLE}); this call has {x.dtype} on {x.device}, "
            f"autograd {'on' if grad else 'off'}{'' if reason is None else ', ' + reason}.\n"
            "Note: use impl='auto' to fall back to the torch path in such calls."
        )
    return False


def crop(t: torch.Tensor, dim: int, length: int | torch.SymInt) -> torch.Tensor:
    """The first ``length`` entries of ``t`` along ``dim`` (the real tokens of a padded tensor).

    Exported as a Gather of arange(length), not a Slice: shape inference then gives the output
    exactly the input's sequence axis (onnxruntime's symbolic shape inference cannot prove a
    padded length such as s * ceil(L / s) >= L, and would give the padded size)."""
    if exporting():
        return t.index_select(dim, torch.arange(length, device=t.device))
    return t.narrow(dim, 0, length)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, E) -> (B, H, L, Dh)."""
    b, length, e = x.shape
    return x.view(b, length, num_heads, e // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, Dh) -> (B, L, E)."""
    b, h, length, dh = x.shape
    return x.transpose(1, 2).reshape(b, length, h * dh)


class MultiHeadProjections(Streamable):
    """Base of the softmax-attention layers: q/k/v/out projections and head bookkeeping.

    Args:
        dim: model width E; must be divisible by ``num_heads``.
        num_heads: number of heads H.
        dropout: dropout on attention probabilities, applied in training only.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, *, device=None, dtype=None) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}).")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = check_dropout(dropout)
        dd = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(dim, dim, **dd)
        self.k_proj = nn.Linear(dim, dim, **dd)
        self.v_proj = nn.Linear(dim, dim, **dd)
        self.out_proj = nn.Linear(dim, dim, **dd)
        self._fused_qkv: FusedProjections | None = None

    def fuse_projections(self) -> None:
        """Project q, k and v with one GEMM in self-attention inference (opt-in; contract and
        caveat in hvlm_export/modules/_fused_projections.py)."""
        self._fused_qkv = FusedProjections(self.q_proj, self.k_proj, self.v_proj)

    def unfuse_projections(self) -> None:
        self._fused_qkv = None

    def _project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, L, E) of self-attention: one GEMM when fused and the call records no
        autograd and is not traced (compile, export, jit), else the three projections."""
        fused = getattr(self, "_fused_qkv", None)  # None in layers pickled before it existed
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if (fused is not None and fused.linears == projections  # a replaced projection ends the fusion
                and not any(autograd_on(x, p) for proj in projections for p in proj.parameters())
                and not tracing()):
            return fused(x)
        return tuple(proj(x) for proj in projections)

    def _qkv(self, x: torch.Tensor, memory: torch.Tensor | None = None):
        """Project to heads: q from x, k/v from ``memory`` (default x); each (B, H, *, Dh)."""
        if memory is None:
            return tuple(split_heads(t, self.num_heads) for t in self._project_qkv(x))
        return (
            split_heads(self.q_proj(x), self.num_heads),
            split_heads(self.k_proj(memory), self.num_heads),
            split_heads(self.v_proj(memory), self.num_heads),
        )

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Scaled dot-product attention with a boolean ``mask`` (True = may attend)."""
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.scale)

    def _attend_causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product attention of query i to keys j <= i (no mask tensor: fused kernels)."""
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=self.scale)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, dropout={self.dropout}"
