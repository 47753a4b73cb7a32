"""FlexAttention (CUDA) path of LocalGlobalAttention: a block-sparse sliding window.

Glossary as in ``hvlm_export.modules._attention``; G global tokens, r the window radius,
S = 128 the FlexAttention block size.

The keys are [G global tokens, the L sequence tokens] (one concatenation); the mask
``kv < G or |q - (kv - G)| <= r (and kv - G <= q if causal)`` is evaluated only inside the
key blocks a query block can reach: key block 0 (the global tokens) and the blocks covering
[q_block_start - r, q_block_end + r]. The block table is built directly from that range (at
most ceil((S + 2r) / S) + 2 key blocks per query block), never from an L x L mask, so
building it costs O(L / S) (plus BlockMask's own (L / S)^2 index transpose).

``flex_attention`` runs through ``torch.compile`` (its fused Triton kernel); one compiled
function serves every module.
"""

from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

__all__ = ["local_global_flex", "window_block_mask"]

BLOCK = 128


@functools.cache
def _compiled_flex():
    """One compiled flex_attention for the process (default dynamic=None: after a second
    length, torch.compile makes L symbolic instead of recompiling per length)."""
    return torch.compile(flex_attention)


@functools.cache
def _window_mod(num_global: int, radius: int, causal: bool):
    """The mask_mod of one window configuration; cached so that torch.compile sees the same
    function object on every call (a new closure per call would recompile each time)."""

    def mask_mod(b, h, q_idx, kv_idx):
        j = kv_idx - num_global
        near = (q_idx - j).abs() <= radius
        if causal:
            near = near & (j <= q_idx)
        return (kv_idx < num_global) | near

    return mask_mod


def window_block_mask(length: int, num_global: int, radius: int, causal: bool, device: torch.device,
                      backward: bool = True) -> BlockMask:
    """The BlockMask of local + global attention for L queries and G + L keys (``backward``:
    also the transposed table that the backward pass reads)."""
    kv_len = num_global + length
    nq, nkv = -(-length // BLOCK), -(-kv_len // BLOCK)
    start = torch.arange(nq, device=device) * BLOCK  # first query of each block
    first = torch.clamp((start - radius + num_global) // BLOCK, min=0)
    last_pos = start + BLOCK - 1 if causal else start + BLOCK - 1 + radius
    last = torch.clamp((last_pos + num_global) // BLOCK, max=nkv - 1)
    span = -(-(BLOCK + 2 * radius) // BLOCK) + 2
    idx = first[:, None] + torch.arange(span, device=device)  # candidate key blocks
    valid = idx <= last[:, None]
    if num_global:  # key block 0 holds the global tokens: put it first when the window misses it
        needs = first > 0
        idx = torch.cat([torch.zeros_like(idx[:, :1]), idx], dim=1)
        valid = torch.cat([needs[:, None], valid], dim=1)
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid blocks first
    kv_indices = torch.gather(torch.where(valid, idx, 0), 1, order).to(torch.int32)
    kv_num = valid.sum(dim=1).to(torch.int32)
    # BlockMask reads the index table as (nq, nkv) (only the first kv_num entries of a row count)
    kv_indices = torch.nn.functional.pad(kv_indices, (0, max(nkv - kv_indices.shape[1], 0)))
    return BlockMask.from_kv_blocks(kv_num[None, None], kv_indices[None, None], BLOCK_SIZE=BLOCK,
                                    mask_mod=_window_mod(num_global, radius, causal), seq_lengths=(length, kv_len),
                                    compute_q_blocks=backward)


@functools.lru_cache(maxsize=32)
def _cached_block_mask(length: int, num_global: int, radius: int, causal: bool, device: torch.device,
                       backward: bool) -> BlockMask:
    """Eager calls reuse the table of a length seen before (it is a pure function of its
    arguments); building it is a dozen small kernels, noticeable next to a short sequence."""
    return window_block_mask(length, num_global, radius, causal, device, backward)


def local_global_flex(layer, x: torch.Tensor) -> torch.Tensor:
    """LocalGlobalAttention's attention output (B, L, E), before out_proj, through FlexAttention."""
    b, length, e = x.shape
    h, dh, g = layer.num_heads, layer.head_dim, layer.num_global_tokens

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, t.shape[1], h, dh).transpose(1, 2)

    def with_globals(proj) -> torch.Tensor:
        seq = proj(x)
        if not g:
            return seq
        return torch.cat([proj(layer.global_tokens)[None].expand(b, -1, -1), seq], dim=1)

    build = window_block_mask if torch.compiler.is_compiling() else _cached_block_mask
    mask = build(length, g, layer.radius, layer.causal, x.device, torch.is_grad_enabled())
    out = _compiled_flex()(heads(layer.q_proj(x)), heads(with_globals(layer.k_proj)),
                           heads(with_globals(layer.v_proj)), block_mask=mask, scale=layer.scale)
    return out.transpose(1, 2).reshape(b, length, e)
