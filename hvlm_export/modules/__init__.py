"""The seven mechanisms, export-friendly by construction (see docs/ATTENTION.md)."""

import torch
from torch import nn

from hvlm_export.modules._fused_projections import fuse_projections, unfuse_projections
from hvlm_export.modules.blocks import HierarchicalAttentionBlock, LinearAttentionBlock
from hvlm_export.modules.mamba import MambaLayer
from hvlm_export.modules.performer import PerformerAttention
from hvlm_export.modules.cross_memory import CrossMemoryAttention
from hvlm_export.modules.sparse import LocalGlobalAttention, StridedAttention

__all__ = [
    "StridedAttention",
    "LocalGlobalAttention",
    "CrossMemoryAttention",
    "HierarchicalAttentionBlock",
    "PerformerAttention",
    "MambaLayer",
    "LinearAttentionBlock",
    "cast_module",
    "fuse_projections",
    "unfuse_projections",
]


def cast_module(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module.to(dtype)``, keeping float32 the parameters a sub-module lists in its
    ``_keep_fp32`` (Mamba's ``A_log``: the state decay exp(A dt) is sensitive to its rounding,
    and the reference keeps it float32). Export, bench and the GPU tests cast through this."""
    module = module.to(dtype)
    for sub in module.modules():
        for name in getattr(sub, "_keep_fp32", ()):
            param = getattr(sub, name)
            param.data = param.data.float()
    return module
