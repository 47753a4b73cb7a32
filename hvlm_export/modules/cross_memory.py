"""Cross-attention from a sequence to a memory bank: dense softmax attention (flash SDPA).

It is also the benchmarks' baseline (``hvlm_export.bench.BASELINE``): used as
self-attention it is the dense module every sparse and linear mechanism is compared with.
Shapes follow the glossary in ``hvlm_export.modules._attention``.
"""

from __future__ import annotations

import torch

from hvlm_export.modules._attention import (
    MultiHeadProjections,
    check_mask,
    check_sequence,
    merge_heads,
    zero_padding,
)

__all__ = ["CrossMemoryAttention"]


class CrossMemoryAttention(MultiHeadProjections):
    """Cross-attention from a sequence to a memory bank (keys/values from memory).

    Args:
        dim: model width E (default 768).
        num_heads: heads H (default 12).
        dropout: attention-probability dropout, training only (default 0.0).
    """

    def __init__(self, dim: int = 768, num_heads: int = 12, dropout: float = 0.0, *, device=None, dtype=None) -> None:
        super().__init__(dim, num_heads, dropout, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, E); memory: (B, M, E) or None for self-attention. Returns (B, L, E).

        attention_mask (B, L) / memory_mask (B, M): 1 = real token (right padding). Padded
        positions of x output 0; padded memory tokens (padded tokens of x, without a memory)
        are no key. A sample with no real key at all gets a zero attention output."""
        check_sequence(x, self.dim)
        if memory is not None:
            check_sequence(memory, self.dim, name="memory")
            if memory.shape[0] != x.shape[0]:
                raise ValueError(
                    f"memory batch size {memory.shape[0]} does not match x batch size {x.shape[0]}."
                )
        elif memory_mask is not None:
            raise ValueError("memory_mask was given without a memory.\nNote: pass memory=..., or use attention_mask.")
        mask = None if attention_mask is None else check_mask(attention_mask, x)
        keys = mask if memory is None else (None if memory_mask is None else check_mask(memory_mask, memory, "memory_mask"))
        q, k, v = self._qkv(x, memory)
        if keys is None:
            out = self._attend(q, k, v, None)
        else:
            some = keys.any(-1)[:, None, None, None]  # (B, 1, 1, 1): the sample has a real key
            out = self._attend(q, k, v, (keys[:, None, None, :] | ~some)) * some.to(q.dtype)
        return zero_padding(self.out_proj(merge_heads(out)), mask)

    def streaming_error(self) -> str | None:
        return "cross-memory attention is not causal"

    def fuse_with_memory(
        self, x: torch.Tensor, memory: torch.Tensor | None, fusion_ratio: float = 0.5,
        attention_mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return (1 - fusion_ratio) * x + fusion_ratio * self(x, memory, masks), 0 at padded
        positions of x."""
        if isinstance(fusion_ratio, bool) or not isinstance(fusion_ratio, (int, float)):
            raise TypeError(f"fusion_ratio must be a float in [0, 1], got {fusion_ratio!r}.")
        if not 0.0 <= fusion_ratio <= 1.0:
            raise ValueError(f"fusion_ratio must be in [0, 1], got {fusion_ratio}.")
        fused = (1.0 - fusion_ratio) * x + fusion_ratio * self(x, memory, attention_mask, memory_mask)
        return zero_padding(fused, None if attention_mask is None else check_mask(attention_mask, x))
