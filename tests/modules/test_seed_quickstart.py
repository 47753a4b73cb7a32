"""The seed's quick-start calls, verbatim (shrunk only in sequence length)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from hvlm_export.modules import (
    CrossMemoryAttention,
    HierarchicalAttentionBlock,
    LinearAttentionBlock,
    LocalGlobalAttention,
    MambaLayer,
    PerformerAttention,
    StridedAttention,
)


def test_basic_usage():
    x = torch.randn(2, 128, 768)
    attn = StridedAttention(stride=4, dim=768, num_heads=12)
    assert attn(x).shape == x.shape
    attn = LocalGlobalAttention(local_window=64, num_global_tokens=4, dim=768, num_heads=12)
    assert attn(x).shape == x.shape
    x_long = torch.randn(1, 256, 768)
    attn = PerformerAttention(dim=768, num_heads=12)
    assert attn(x_long).shape == x_long.shape
    mamba = MambaLayer(dim=768, state_size=16)
    assert mamba(x_long).shape == x_long.shape


def test_memory_integration():
    cross_attn = CrossMemoryAttention(dim=768, num_heads=12)
    local_features = torch.randn(2, 64, 768)
    memory_tokens = torch.randn(2, 32, 768)
    assert cross_attn(local_features, memory_tokens).shape == local_features.shape
    fused = cross_attn.fuse_with_memory(local_features, memory_tokens, fusion_ratio=0.5)
    assert fused.shape == local_features.shape


def test_stacking_layers():
    layers = nn.ModuleList([
        HierarchicalAttentionBlock(attention_type='strided', stride=4),
        HierarchicalAttentionBlock(attention_type='local_global'),
        HierarchicalAttentionBlock(attention_type='cross_memory'),
    ])
    x = torch.randn(2, 96, 768)
    for layer in layers:
        x = layer(x)
    assert x.shape == (2, 96, 768)


@pytest.mark.parametrize("block, attention_type, layer", [
    (HierarchicalAttentionBlock, "strided", StridedAttention),
    (HierarchicalAttentionBlock, "local_global", LocalGlobalAttention),
    (HierarchicalAttentionBlock, "cross_memory", CrossMemoryAttention),
    (LinearAttentionBlock, "performer", PerformerAttention),
    (LinearAttentionBlock, "mamba", MambaLayer),
])
def test_bare_blocks(block, attention_type, layer):
    """A block built with nothing but its attention type has the DESIGN defaults: dim 768,
    a mechanism of the right class, and a residual forward of the input's shape."""
    b = block(attention_type=attention_type).eval()
    assert type(b.attn) is layer and b.dim == 768 and b.attn.dim == 768
    assert b.mlp[0].out_features == 4 * 768  # mlp_ratio 4.0
    x = torch.randn(1, 9, 768)
    with torch.no_grad():
        y = b(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.equal(y, x)
