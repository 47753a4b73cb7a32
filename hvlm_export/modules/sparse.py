"""Sparse softmax attention: strided (dilated), local + global, and cross-memory.

Shapes follow the glossary in ``hvlm_export.modules._attention``. Strided and local/global
attention never build an L x L mask: they pad the sequence, regroup it into groups or blocks
with reshapes and slices only (no ``unfold`` / ``as_strided``), and run
``scaled_dot_product_attention`` inside each group with a small mask that hides padding.
Every size is derived from the input's symbolic shape, so an exported graph works for any L.

References: Child et al. 2019, "Generating Long Sequences with Sparse Transformers" (strided
pattern, section 4.2); Beltagy et al. 2020, "Longformer" (sliding window + global tokens,
section 3.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hvlm_export.modules._attention import (
    MultiHeadProjections,
    check_positive_int,
    check_sequence,
    merge_heads,
    split_heads,
)

__all__ = ["StridedAttention", "LocalGlobalAttention", "CrossMemoryAttention"]


class StridedAttention(MultiHeadProjections):
    """Dilated attention: query i attends to key j iff (i - j) % stride == 0 (and j <= i if causal).

    The positions with the same residue modulo ``stride`` form one group of ceil(L / stride)
    tokens; attention runs densely inside each group, so time and memory are O(L^2 / stride).
    ``stride=1`` is exact full attention.

    Non-causal masks hide only padded keys (broadcast over queries), so SDPA's fused kernels
    run inside the groups.

    Args:
        dim: model width E (default 768).
        num_heads: heads H (default 12).
        stride: dilation s >= 1 (default 4).
        dropout: attention-probability dropout, training only (default 0.0).
        causal: restrict to j <= i (default False).
    """

    def __init__(
        self,
        dim: int = 768,
        num_heads: int = 12,
        stride: int = 4,
        dropout: float = 0.0,
        causal: bool = False,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, num_heads, dropout, device=device, dtype=dtype)
        self.stride = check_positive_int("stride", stride)
        self.causal = bool(causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, E) -> (B, L, E)."""
        check_sequence(x, self.dim)
        b, length, _ = x.shape
        s, h, dh = self.stride, self.num_heads, self.head_dim
        q, k, v = self._qkv(x)  # (B, H, L, Dh)
        pad = (s - length % s) % s
        n = (length + pad) // s  # tokens per group

        def group(t: torch.Tensor) -> torch.Tensor:  # (B, H, L, Dh) -> (B, H*s, n, Dh)
            t = F.pad(t, (0, 0, 0, pad)).view(b, h, n, s, dh).transpose(2, 3)
            return t.reshape(b, h * s, n, dh)

        out = self._attend(group(q), group(k), group(v), self._mask(length, n, x.device))
        out = out.reshape(b, h, s, n, dh).transpose(2, 3).reshape(b, h, n * s, dh)[:, :, :length]
        return self.out_proj(merge_heads(out))

    def _mask(self, length: int, n: int, device: torch.device) -> torch.Tensor:
        """Boolean mask; group r's slot t holds position t*s + r.

        Non-causal: (H*s, 1, n), hiding padded keys only, broadcast over queries, so SDPA can
        use its fused kernels and memory stays O(L). Slot 0 always counts as a key: it is
        padding only in groups that are all padding (r >= L), whose rows are discarded, and
        it keeps them finite. Causal: (H*s, n, n) with t_k <= t_q (the diagonal is always a
        real key for a real query).
        """
        s = self.stride
        slot = torch.arange(n, device=device)
        pos = slot[None, :] * s + torch.arange(s, device=device)[:, None]  # (s, n)
        keys = (pos < length) | (slot == 0)[None, :]
        if not self.causal:
            return keys[:, None, :].repeat(self.num_heads, 1, 1)
        allowed = keys[:, None, :] & (slot[None, :] <= slot[:, None])
        allowed = allowed | (slot[:, None] == slot[None, :])  # padded query rows stay finite
        return allowed.repeat(self.num_heads, 1, 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stride={self.stride}, causal={self.causal}"


class LocalGlobalAttention(MultiHeadProjections):
    """Longformer-style attention: a sliding window plus learned global tokens, one softmax.

    ``global_tokens`` (G, E) are prepended to the sequence as keys/values (through the same
    k/v projections). Sequence token i attends to tokens j with |i - j| <= local_window // 2
    (and j <= i if causal) and to all G global tokens. Only the L sequence positions are
    returned. The sequence is cut into blocks of w = max(local_window // 2, 1) tokens; each
    block attends to itself and its two neighbours, so cost is O(L * (3w + G)).

    Args:
        dim: model width E (default 768).
        num_heads: heads H (default 12).
        local_window: window width >= 1 (default 64); radius local_window // 2.
        num_global_tokens: G >= 0 (default 4).
        dropout: attention-probability dropout, training only (default 0.0).
        causal: restrict local keys to j <= i (default False); global tokens stay visible.
    """

    def __init__(
        self,
        dim: int = 768,
        num_heads: int = 12,
        local_window: int = 64,
        num_global_tokens: int = 4,
        dropout: float = 0.0,
        causal: bool = False,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, num_heads, dropout, device=device, dtype=dtype)
        self.local_window = check_positive_int("local_window", local_window)
        self.num_global_tokens = check_positive_int("num_global_tokens", num_global_tokens, minimum=0)
        self.causal = bool(causal)
        self.radius = local_window // 2
        self.block = max(self.radius, 1)
        self.global_tokens = nn.Parameter(torch.randn(num_global_tokens, dim, device=device, dtype=dtype) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, E) -> (B, L, E)."""
        check_sequence(x, self.dim)
        b, length, _ = x.shape
        w, h, dh, g = self.block, self.num_heads, self.head_dim, self.num_global_tokens
        q, k, v = self._qkv(x)  # (B, H, L, Dh)
        pad = (w - length % w) % w
        nb = (length + pad) // w  # blocks

        def windows(t: torch.Tensor) -> torch.Tensor:  # (B, H, L, Dh) -> (B, H, nb, 3w, Dh)
            t = F.pad(t, (0, 0, w, w + pad)).view(b, h, nb + 2, w, dh)
            return torch.cat([t[:, :, :-2], t[:, :, 1:-1], t[:, :, 2:]], dim=3)

        keys, values = windows(k), windows(v)
        if g:
            gk = split_heads(self.k_proj(self.global_tokens)[None], h)  # (1, H, G, Dh)
            gv = split_heads(self.v_proj(self.global_tokens)[None], h)
            keys = torch.cat([gk[:, :, None].expand(b, h, nb, g, dh), keys], dim=3)
            values = torch.cat([gv[:, :, None].expand(b, h, nb, g, dh), values], dim=3)
        qb = F.pad(q, (0, 0, 0, pad)).reshape(b, h * nb, w, dh)
        span = g + 3 * w
        out = self._attend(
            qb,
            keys.reshape(b, h * nb, span, dh),
            values.reshape(b, h * nb, span, dh),
            self._mask(length, nb, x.device),
        )
        out = out.reshape(b, h, nb * w, dh)[:, :, :length]
        return self.out_proj(merge_heads(out))

    def _mask(self, length: int, nb: int, device: torch.device) -> torch.Tensor:
        """(H*nb, w, G + 3w) boolean mask over [global keys, previous, own, next block]."""
        w = self.block
        qpos = torch.arange(nb * w, device=device).view(nb, w, 1)
        kpos = (torch.arange(nb, device=device)[:, None] * w - w + torch.arange(3 * w, device=device)).view(nb, 1, 3 * w)
        allowed = ((qpos - kpos).abs() <= self.radius) & (kpos >= 0) & (kpos < length)
        if self.causal:
            allowed = allowed & (kpos <= qpos)
        allowed = allowed | (kpos == qpos)  # keeps padded query rows finite
        glob = torch.ones(nb, w, self.num_global_tokens, dtype=torch.bool, device=device)
        return torch.cat([glob, allowed], dim=-1).repeat(self.num_heads, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, local_window={self.local_window}, "
            f"num_global_tokens={self.num_global_tokens}, causal={self.causal}"
        )


class CrossMemoryAttention(MultiHeadProjections):
    """Cross-attention from a sequence to a memory bank (keys/values from memory).

    Args:
        dim: model width E (default 768).
        num_heads: heads H (default 12).
        dropout: attention-probability dropout, training only (default 0.0).
    """

    def __init__(self, dim: int = 768, num_heads: int = 12, dropout: float = 0.0, *, device=None, dtype=None) -> None:
        super().__init__(dim, num_heads, dropout, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, E); memory: (B, M, E) or None for self-attention. Returns (B, L, E)."""
        check_sequence(x, self.dim)
        if memory is not None:
            check_sequence(memory, self.dim, name="memory")
            if memory.shape[0] != x.shape[0]:
                raise ValueError(
                    f"memory batch size {memory.shape[0]} does not match x batch size {x.shape[0]}."
                )
        q, k, v = self._qkv(x, memory)
        return self.out_proj(merge_heads(self._attend(q, k, v, None)))

    def fuse_with_memory(
        self, x: torch.Tensor, memory: torch.Tensor | None, fusion_ratio: float = 0.5
    ) -> torch.Tensor:
        """Return (1 - fusion_ratio) * x + fusion_ratio * self(x, memory)."""
        if isinstance(fusion_ratio, bool) or not isinstance(fusion_ratio, (int, float)):
            raise TypeError(f"fusion_ratio must be a float in [0, 1], got {fusion_ratio!r}.")
        if not 0.0 <= fusion_ratio <= 1.0:
            raise ValueError(f"fusion_ratio must be in [0, 1], got {fusion_ratio}.")
        return (1.0 - fusion_ratio) * x + fusion_ratio * self(x, memory)
