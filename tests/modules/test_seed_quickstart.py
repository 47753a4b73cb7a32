"""The seed's quick-start calls, verbatim (shrunk only in sequence length)."""

from __future__ import annotations

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


def test_bare_blocks():
    for t in ("strided", "local_global", "cross_memory"):
        assert HierarchicalAttentionBlock(attention_type=t).attn is not None
    for t in ("performer", "mamba"):
        assert LinearAttentionBlock(attention_type=t).attn is not None
