"""The seven mechanisms, export-friendly by construction (see docs/ATTENTION.md)."""

from hvlm_export.modules.blocks import HierarchicalAttentionBlock, LinearAttentionBlock
from hvlm_export.modules.mamba import MambaLayer
from hvlm_export.modules.performer import PerformerAttention
from hvlm_export.modules.sparse import CrossMemoryAttention, LocalGlobalAttention, StridedAttention

__all__ = [
    "StridedAttention",
    "LocalGlobalAttention",
    "CrossMemoryAttention",
    "HierarchicalAttentionBlock",
    "PerformerAttention",
    "MambaLayer",
    "LinearAttentionBlock",
]
