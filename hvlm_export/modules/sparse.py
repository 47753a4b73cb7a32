"""Sparse softmax attention: strided (dilated) and local + global (cross-memory attention,
dense, lives in hvlm_export.modules.cross_memory and is re-exported here).

Shapes follow the glossary in ``hvlm_export.modules._attention``. Strided and local/global
attention never build an L x L mask: they pad the sequence, regroup it into groups or blocks
with reshapes and slices only (no ``unfold`` / ``as_strided``), and run
``scaled_dot_product_attention`` inside each group: strided with no mask at all (so the flash
kernels apply), local/global with one small block mask shared by batch and heads (or, on CUDA,
FlexAttention with a block-sparse mask). Every size is derived from the input's symbolic
shape, so an exported graph works for any L. For CUDA inference in half precision both
layers run one fused Triton kernel instead (``hvlm::sparse_attention``,
hvlm_export.ops.sparse_attention), which needs none of the regrouping.

References: Child et al. 2019, "Generating Long Sequences with Sparse Transformers" (strided
pattern, section 4.2); Beltagy et al. 2020, "Longformer" (sliding window + global tokens,
section 3.1).
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from hvlm_export.modules._attention import (
    FusedImpl,
    MultiHeadProjections,
    check_impl,
    check_mask,
    check_positive_int,
    check_sequence,
    crop,
    exporting,
    merge_heads,
    split_heads,
    use_fused,
    zero_padding,
)
from hvlm_export.modules._streaming import StateSpec
from hvlm_export.modules.cross_memory import CrossMemoryAttention
from hvlm_export.modules._sparse_fused import fused_sparse, sparse_misfit

__all__ = ["StridedAttention", "LocalGlobalAttention", "CrossMemoryAttention"]

LocalImpl = Literal["auto", "blocked", "flex", "triton"]
_LOCAL_IMPLS = ("auto", "blocked", "flex", "triton")
#: smallest query block of the blocked local/global path: tiny windows still give blocks big
#: enough for the fused SDPA kernels (cost per query: G + w + 2r keys)
_MIN_BLOCK = 32


def _group_keys(mask: torch.Tensor, n, s: int, h: int) -> torch.Tensor:
    """The (B, s H, 1, n) key mask of the strided groups (heads laid out as in
    StridedAttention: head r H + j is head j of group r) from the (B, L) padding mask: the
    regrouping's own padding is no key either. A group without any real token (its queries
    are all padding) keeps every key, so that no softmax row is empty (those rows are zeroed)."""
    b, length = mask.shape
    keys = F.pad(mask.to(torch.uint8), (0, n * s - length)).view(b, n, s).transpose(1, 2) != 0  # (B, s, n)
    keys = keys | ~keys.any(-1, keepdim=True)
    return keys[:, :, None, None, :].expand(b, s, h, 1, n).reshape(b, s * h, 1, n)


def _graph_traced() -> bool:
    """Whether torch.compile or torch.export traces this call: sizes are symbolic, so the eager
    shortcuts that test them (no pad, one SDPA call, a clamped stride) must not shape the graph."""
    return torch.compiler.is_compiling() or exporting()


def _pad_tokens(x: torch.Tensor, amount) -> torch.Tensor:
    """x (B, L, E) with ``amount`` zero tokens appended; eager calls with nothing to append
    return x itself (F.pad would copy it), traced graphs always keep the Pad."""
    if not _graph_traced() and amount == 0:
        return x
    return F.pad(x, (0, 0, 0, amount))


class StridedAttention(MultiHeadProjections):
    """Dilated attention: query i attends to key j iff (i - j) % stride == 0 (and j <= i if causal).

    The positions with the same residue r modulo ``stride`` form one group (r, r + s, ...);
    attention is plain dense attention inside each group, so time is O(L^2 / stride) and
    ``stride=1`` is exact full attention. With the sequence padded to n s tokens
    (n = ceil(L / s)), a projection's (B, n s, E) output *is* (B, n, s H, Dh): token t = i s + r
    of head j sits at [i, r H + j]. So the groups are the heads of one
    ``scaled_dot_product_attention`` call over a view, (B, s H, n, Dh), head r H + j being
    head j of group r: no regrouping copy and no mask, so the flash / cuDNN kernels apply, and
    the output comes back in sequence order:

    * causal: padding sits at the end of a group, after every real key of that group, so
      ``is_causal=True`` over the groups is exact;
    * non-causal: groups r < rem (rem = L - (n - 1) s) hold n tokens and the others n - 1;
      the two sets of heads are two SDPA calls (the second without its padded last slot),
      one when L is a multiple of s.

    On the H200 this path is faster than the fused Triton kernel at every measured length
    (2K - 64K tokens, causal or not; docs/BENCHMARKS.md), so ``impl='auto'`` takes it; the
    kernel (``hvlm::sparse_attention``, shared with LocalGlobalAttention) stays available as
    ``impl='triton'``.

    ``attention_mask`` (B, L) (1 = real token, right padding): padded positions output 0 and
    are no key of a real query (non-causal: one SDPA call with the groups' key mask; causal
    needs none, a real query's earlier keys are real).

    Args:
        dim: model width E (default 768).
        num_heads: heads H (default 12).
        stride: dilation s >= 1 (default 4).
        dropout: attention-probability dropout, training only (default 0.0).
        causal: restrict to j <= i (default False).
        impl: 'auto' (default) or 'torch': the SDPA path above. 'triton': the fused kernel
            (float16/bfloat16 CUDA inputs, no autograd, no padding mask unless causal, head
            width <= 128; a call it cannot serve is a ValueError).
    """

    def __init__(
        self,
        dim: int = 768,
        num_heads: int = 12,
        stride: int = 4,
        dropout: float = 0.0,
        causal: bool = False,
        *,
        impl: FusedImpl = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, num_heads, dropout, device=device, dtype=dtype)
        self.stride = check_positive_int("stride", stride)
        self.causal = bool(causal)
        self.impl = check_impl(impl)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, E), attention_mask: (B, L) or None -> (B, L, E)."""
        check_sequence(x, self.dim)
        mask = None if attention_mask is None else check_mask(attention_mask, x)
        if self.impl == "triton" and use_fused(self.impl, x, self.q_proj.weight, "the fused strided kernel",
                                               lambda: sparse_misfit(self, x, mask, self.stride)):
            return zero_padding(self.out_proj(fused_sparse(self, x, self.stride, -1)), mask)
        b, length, e = x.shape
        s, h = self.stride, self.num_heads
        if not _graph_traced():
            s = min(s, length)  # exact (a stride >= L leaves each token alone); no s - L padding rows
        n = (length + s - 1) // s  # tokens per full group
        xp = _pad_tokens(x, n * s - length)
        # (B, n s, E) = (B, n, s H, Dh): the groups' heads, a view (each projection its own buffer)
        q, k, v = (proj(xp).view(b, n, s * h, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.causal:
            out = self._attend_causal(q, k, v).transpose(1, 2)
        elif mask is None:
            out = self._attend_ragged(q, k, v, (length - (n - 1) * s) * h)
        else:
            out = self._attend(q, k, v, _group_keys(mask, n, s, h)).transpose(1, 2)
        # (B, n, s H, Dh) is sequence order: a view where SDPA wrote it so (flash, cuDNN)
        return zero_padding(self.out_proj(crop(out.reshape(b, n * s, e), 1, length)), mask)

    def _attend_ragged(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, full) -> torch.Tensor:
        """Non-causal attention over (B, s H, n, Dh) group heads whose first ``full`` heads
        hold n real tokens and the others n - 1 (their last slot is padding), without a mask;
        returns (B, n, s H, Dh).

        Two SDPA calls: the full heads, and the short ones without their last slot. When L is
        a multiple of s the short set is empty (SDPA, ONNX Runtime and torch.export all accept
        that; eager calls make one call). A sequence axis is never empty: for L < s the short
        groups, which hold no real token at all, keep their one padded slot and their rows are
        discarded.
        """
        n = q.shape[2]
        if statically_known_true(full == q.shape[1]):
            # known without a guard (eager, or a graph traced with static shapes; symbolic sizes
            # keep both calls): every group is full, so one call is the whole answer. It also
            # avoids the empty batch, for which CUDA SDPA returns None instead of an empty
            # half-precision tensor (torch 2.11, H200) and which broke torch.compile's static
            # graph in three there
            return self._attend(q, k, v, None).transpose(1, 2)
        short_len, rest = torch.sym_max(n - 1, 1), q.shape[1] - full
        # narrow, not slices: a slice's end clamping would guard an exported graph on rest == 0
        short = self._attend(*(t.narrow(1, full, rest).narrow(2, 0, short_len) for t in (q, k, v)), None)
        whole = self._attend(*(t.narrow(1, 0, full) for t in (q, k, v)), None)
        return torch.cat([whole.transpose(1, 2), F.pad(short, (0, 0, 0, n - short_len)).transpose(1, 2)], dim=2)

    def streaming_error(self) -> str | None:
        return None if self.causal else "it is not causal (build it with causal=True)"

    def state_specs(self) -> list[StateSpec]:
        """A key/value cache that grows by T every step ('past' keys so far)."""
        shape = ("batch", self.num_heads, "past", self.head_dim)
        return [StateSpec("k", shape, "model"), StateSpec("v", shape, "model")]

    def _step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """New queries attend to cached and new keys at the same residue mod s, j <= i."""
        q, k, v = self._qkv(x)  # (B, H, T, Dh)
        keys = torch.cat([state["k"], k.to(state["k"].dtype)], dim=2)
        values = torch.cat([state["v"], v.to(state["v"].dtype)], dim=2)
        past = state["k"].shape[2]
        gap = (past + torch.arange(x.shape[1], device=x.device))[:, None] - torch.arange(keys.shape[2], device=x.device)
        out = self._attend(q, keys.to(q.dtype), values.to(q.dtype), (gap >= 0) & (gap % self.stride == 0))
        return self.out_proj(merge_heads(out)), {"k": keys, "v": values}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stride={self.stride}, causal={self.causal}, impl={self.impl!r}"


class LocalGlobalAttention(MultiHeadProjections):
    """Longformer-style attention: a sliding window plus learned global tokens, one softmax.

    ``global_tokens`` (G, E) are prepended to the sequence as keys/values (through the same
    k/v projections). Sequence token i attends to tokens j with |i - j| <= local_window // 2
    (and j <= i if causal) and to all G global tokens. Only the L sequence positions are
    returned. Two implementations of the same function, chosen by ``impl``:

    * ``'blocked'`` (standard ops; what the ONNX export uses): the queries are cut into blocks
      of w = max(radius, 32) tokens; block b attends to the G global keys and to the local keys
      [b w - r, b w + w + r) (w + 2r keys; w + r if causal), gathered with one concatenation
      of slices, under one (nb, w, G + w + 2r) mask shared by batch and heads:
      O(L (G + w + 2r)) time and memory, never an L x L mask.
    * ``'triton'`` (CUDA inference, half precision): one fused kernel
      (``hvlm::sparse_attention``) that reads the window's keys where the projections wrote
      them, the global keys first; no block padding, copies or mask tensor.
    * ``'flex'`` (CUDA, opt-in): FlexAttention over [global keys, sequence] with a
      block-sparse mask that visits only the key blocks inside the window
      (hvlm_export.modules._flex); no dropout. Measured on an H200 (docs/BENCHMARKS.md): in
      eager mode it is about 1.8x faster than 'blocked' at 64K tokens; under torch.compile
      'blocked' is as fast or faster, hence opt-in.
    ``'auto'`` (default) is 'triton' exactly when the kernel can serve the call (float16 /
    bfloat16 CUDA inputs, no autograd, no padding mask unless causal, head width <= 128, at
    most 64 global tokens), else 'blocked'. All are tested against dense masked attention.

    ``attention_mask`` (B, L) (1 = real token, right padding): padded positions output 0 and
    are no key of a real query (non-causal: the blocks' mask gets each sample's key mask,
    always through 'blocked'; causal needs none, a real query's earlier keys are real).

    Args:
        dim: model width E (default 768).
        num_heads: heads H (default 12).
        local_window: window width >= 1 (default 64); radius r = local_window // 2.
        num_global_tokens: G >= 0 (default 4).
        dropout: attention-probability dropout, training only (default 0.0).
        causal: restrict local keys to j <= i (default False); global tokens stay visible.
        impl: 'auto' (default), 'blocked', 'flex' or 'triton'.
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
        impl: LocalImpl = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, num_heads, dropout, device=device, dtype=dtype)
        self.local_window = check_positive_int("local_window", local_window)
        self.num_global_tokens = check_positive_int("num_global_tokens", num_global_tokens, minimum=0)
        self.causal = bool(causal)
        self.impl = check_impl(impl, _LOCAL_IMPLS)
        self.radius = local_window // 2
        self.block = max(self.radius, _MIN_BLOCK)
        self.global_tokens = nn.Parameter(torch.randn(num_global_tokens, dim, device=device, dtype=dtype) * 0.02)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, E), attention_mask: (B, L) or None -> (B, L, E)."""
        check_sequence(x, self.dim)
        mask = None if attention_mask is None else check_mask(attention_mask, x)
        misfit = functools.partial(sparse_misfit, self, x, mask, 1)
        if use_fused(self.impl, x, self.q_proj.weight, "the fused local/global kernel", misfit):
            glob = self.global_tokens if self.num_global_tokens else None
            return zero_padding(self.out_proj(fused_sparse(self, x, 1, self.radius, glob)), mask)
        if self.impl == "flex" and (mask is None or self.causal):
            from hvlm_export.modules._flex import local_global_flex

            if self.training and self.dropout > 0:
                raise ValueError("impl='flex' has no attention dropout.\nNote: train with impl='blocked'.")
            return zero_padding(self.out_proj(local_global_flex(self, x)), mask)
        return zero_padding(self.out_proj(self._blocked(x, None if self.causal else mask)), mask)

    def streaming_error(self) -> str | None:
        return None if self.causal else "it is not causal (build it with causal=True)"

    def state_specs(self) -> list[StateSpec]:
        """The last max(r, 1) keys and values (a fixed size) and the position of the next token."""
        shape = ("batch", self.num_heads, max(self.radius, 1), self.head_dim)
        return [StateSpec("k", shape, "model"), StateSpec("v", shape, "model"), StateSpec("pos", ("batch",), "int64")]

    def _step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """New queries attend to the global tokens, the cached keys and the new keys within r."""
        b, t, _ = x.shape
        q, k, v = self._qkv(x)  # (B, H, T, Dh)
        cache = state["k"].shape[2]
        keys = torch.cat([state["k"], k.to(state["k"].dtype)], dim=2)
        values = torch.cat([state["v"], v.to(state["v"].dtype)], dim=2)
        qpos = state["pos"][:, None] + torch.arange(t, device=x.device)  # (B, T)
        kpos = torch.cat([state["pos"][:, None] - cache + torch.arange(cache, device=x.device), qpos], dim=1)
        gap = qpos[:, :, None] - kpos[:, None, :]  # (B, T, R + T)
        mask = (kpos[:, None, :] >= 0) & (gap >= 0) & (gap <= self.radius)
        attn_k, attn_v = keys.to(q.dtype), values.to(q.dtype)
        if self.num_global_tokens:
            g = self.num_global_tokens
            attn_k = torch.cat([split_heads(self.k_proj(self.global_tokens)[None], self.num_heads).expand(b, -1, -1, -1),
                                attn_k], dim=2)
            attn_v = torch.cat([split_heads(self.v_proj(self.global_tokens)[None], self.num_heads).expand(b, -1, -1, -1),
                                attn_v], dim=2)
            mask = torch.cat([mask.new_ones(b, t, g), mask], dim=-1)
        out = self._attend(q, attn_k, attn_v, mask[:, None])
        new_state = {"k": keys[:, :, t:].contiguous(), "v": values[:, :, t:].contiguous(), "pos": state["pos"] + t}
        return self.out_proj(merge_heads(out)), new_state

    def _blocked(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """The standard-ops path: (B, L, E) -> attention output (B, L, E) before out_proj;
        ``key_mask`` (B, L) bool: which sequence tokens may be keys (None: all)."""
        b, length, e = x.shape
        w, h, dh = self.block, self.num_heads, self.head_dim
        nb = (length + w - 1) // w
        q = F.pad(self.q_proj(x), (0, 0, 0, nb * w - length)).view(b * nb, w, h, dh).transpose(1, 2)
        keys, values = (self._windows(proj(x), proj(self.global_tokens), nb) for proj in (self.k_proj, self.v_proj))
        mask = self._mask(length, nb, x.device)[None]  # (1, nb, w, span): shared by batch and heads
        if key_mask is None:
            mask = mask.expand(b, -1, -1, -1)
        else:  # each sample's real keys; rows left empty (padded queries) keep their mask, zeroed later
            glob = [key_mask.new_ones(b, nb, self.num_global_tokens, dtype=torch.uint8)] if self.num_global_tokens else []
            local = self._local_keys(key_mask.to(torch.uint8)[..., None], nb)
            allowed = mask & (torch.cat([*glob, *(p.squeeze(-1) for p in local)], dim=2) != 0)[:, :, None]
            mask = allowed | (mask & ~allowed.any(-1, keepdim=True))
        out = self._attend(q, keys, values, mask.reshape(b * nb, 1, w, -1))  # (B nb, H, w, Dh)
        return crop(out.transpose(1, 2).reshape(b, nb * w, e), 1, length)

    def _windows(self, t: torch.Tensor, glob: torch.Tensor, nb: int) -> torch.Tensor:
        """(B, L, E) keys or values -> (B nb, H, span, Dh): block b's global keys, then the
        local keys [b w - r, b w + w + r) (+ r dropped when causal), one concatenation."""
        b = t.shape[0]
        parts = [glob[None, None].expand(b, nb, -1, -1)] if self.num_global_tokens else []
        keys = torch.cat(parts + self._local_keys(t, nb), dim=2)
        return keys.view(b * nb, keys.shape[2], self.num_heads, self.head_dim).transpose(1, 2)

    def _local_keys(self, t: torch.Tensor, nb: int) -> list[torch.Tensor]:
        """(B, L, C) -> block b's local keys [b w - r, b w + w + r) (+ r dropped when causal) as
        (B, nb, ., C) slices of one padded copy (padding: zeros)."""
        b, length, c = t.shape
        w, r = self.block, self.radius
        t = F.pad(t, (0, 0, r, nb * w - length + r))  # position p sits at p + r
        parts = [t[:, : nb * w].view(b, nb, w, c)[:, :, :r]] if r else []  # [b w - r, b w)
        parts.append(t[:, r : r + nb * w].view(b, nb, w, c))  # the block itself
        if r and not self.causal:
            parts.append(t[:, 2 * r : 2 * r + nb * w].view(b, nb, w, c)[:, :, w - r :])  # [b w + w, b w + w + r)
        return parts

    def _mask(self, length: int, nb: int, device: torch.device) -> torch.Tensor:
        """(nb, w, span) boolean mask over [global keys, local keys] of each block.

        Within a block the window is one (w, local) pattern, the key's offset from the query
        (|offset| <= r, and <= 0 if causal), a constant of the layer (folded into the graph);
        only whether a local key is a real position (0 <= p < L) depends on the block and
        L. A padded query row (p >= L) keeps its own position, so no row is empty."""
        w, r = self.block, self.radius
        local = w + r if self.causal else w + 2 * r
        offset = torch.arange(local, device=device) - r - torch.arange(w, device=device)[:, None]  # (w, local)
        band = (offset <= 0) & (offset >= -r) if self.causal else offset.abs() <= r
        kpos = (torch.arange(nb, device=device) * w - r)[:, None] + torch.arange(local, device=device)  # (nb, local)
        real = (kpos >= 0) & (kpos < length)
        allowed = band & (real[:, None, :] | (offset == 0))
        glob = torch.ones(nb, w, self.num_global_tokens, dtype=torch.bool, device=device)
        return torch.cat([glob, allowed], dim=-1)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, local_window={self.local_window}, "
            f"num_global_tokens={self.num_global_tokens}, causal={self.causal}, impl={self.impl!r}"
        )
