"""The fused CUDA path shared by StridedAttention and LocalGlobalAttention: when the kernel
``hvlm::sparse_attention`` can serve a call, and the call itself (projections where they
land, one kernel). Shapes follow the glossary in ``hvlm_export.modules._attention``."""

from __future__ import annotations

import torch

from hvlm_export.modules._attention import MultiHeadProjections
from hvlm_export.ops.sparse_attention import MAX_GLOBAL, MAX_GROUPS, MAX_HEAD_DIM, sparse_attention

__all__ = ["sparse_misfit", "fused_sparse"]


def sparse_misfit(layer: MultiHeadProjections, x: torch.Tensor, mask: torch.Tensor | None, stride: int) -> str | None:
    """Why the fused kernel (hvlm::sparse_attention) cannot serve this call of a sparse
    layer, or None. A padding mask is no obstacle when causal: a real query's keys are real.
    Called only for CUDA half-precision inference (use_fused), so its shape checks never
    guard an exported graph."""
    if mask is not None and not layer.causal:
        return "a padding mask (the kernel takes none; causal layers need none)"
    if layer.training and layer.dropout > 0:
        return "attention dropout in training"
    if layer.head_dim > MAX_HEAD_DIM:
        return f"head width {layer.head_dim} > {MAX_HEAD_DIM}"
    if getattr(layer, "num_global_tokens", 0) > MAX_GLOBAL:
        return f"more than {MAX_GLOBAL} global tokens"
    if min(stride, x.shape[1]) * x.shape[0] * layer.num_heads > MAX_GROUPS:
        return f"more than {MAX_GROUPS} (group, batch, head) programs"
    if x.shape[1] * x.shape[2] >= 2**31:
        return "2**31 or more elements per sample"
    return None


def fused_sparse(layer: MultiHeadProjections, x: torch.Tensor, stride: int, radius: int,
                 glob: torch.Tensor | None = None) -> torch.Tensor:
    """The fused CUDA path of both sparse layers: projections where they land, one kernel,
    (B, L, E) before out_proj. ``glob`` (G, E): global tokens (keys and values for all)."""
    b, length, _ = x.shape
    h, dh = layer.num_heads, layer.head_dim
    q, k, v = (t.view(b, length, h, dh) for t in layer._project_qkv(x))  # views of one buffer when fused
    gk = gv = None
    if glob is not None:
        gk, gv = (proj(glob).view(-1, h, dh) for proj in (layer.k_proj, layer.v_proj))
    return sparse_attention(q, k, v, gk, gv, stride, radius, layer.causal, layer.scale)
