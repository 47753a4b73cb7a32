"""FlexAttention (CUDA) path of LocalGlobalAttention: a block-sparse sliding window.

Glossary as in ``hvlm_export.modules._attention``; G global tokens, r the window radius,
S = 128 the FlexAttention block size.

The keys are [G global tokens, the L sequence tokens] (one concatenation); the mask
``kv < G or |q - (kv - G)| <= r (and kv - G <= q if causal)`` is evaluated only inside the
key blocks a query block can reach: key block 0 (the global tokens) and the blocks covering
[q_block_start - r, q_block_end + r]. The block table is built directly from that range (at
most ceil((S + 2r) / S) + 2 key blocks per query block), never from an L x L mask.

The mask reads G and r from a small tensor rather than from Python constants, so one
compiled graph serves every window configuration (torch.compile would otherwise recompile
per configuration and, past its recompile limit, silently run flex_attention's unfused
reference). Inside ``torch.compile(module)`` this code is traced like any other; an eager
call goes through one process-wide compiled function.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

__all__ = ["local_global_flex", "window_block_mask", "block_table"]

BLOCK = 128


def block_table(length: int, num_global: int, radius: int, causal: bool,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_num_blocks (1, 1, nq), kv_indices (1, 1, nq, nkv)) of the window, int32."""
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
        idx = torch.cat([torch.zeros_like(idx[:, :1]), idx], dim=1)
        valid = torch.cat([(first > 0)[:, None], valid], dim=1)
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid blocks first
    kv_indices = torch.gather(torch.where(valid, idx, 0), 1, order).to(torch.int32)
    # BlockMask reads the table as (nq, nkv); only the first kv_num entries of a row count
    kv_indices = F.pad(kv_indices, (0, max(nkv - kv_indices.shape[1], 0)))
    return valid.sum(dim=1).to(torch.int32)[None, None], kv_indices[None, None]


def _window_mask(bounds: torch.Tensor, causal: bool, kv_num: torch.Tensor, kv_indices: torch.Tensor,
                 seq_lengths: tuple[int, int], backward: bool) -> BlockMask:
    """The BlockMask over the table, its mask_mod reading (G, r) from ``bounds``."""

    def mask_mod(b, h, q_idx, kv_idx):
        j = kv_idx - bounds[0]
        near = (q_idx - j).abs() <= bounds[1]
        if causal:
            near = near & (j <= q_idx)
        return (kv_idx < bounds[0]) | near

    return BlockMask.from_kv_blocks(kv_num, kv_indices, BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                    seq_lengths=seq_lengths, compute_q_blocks=backward)


def window_block_mask(length: int, num_global: int, radius: int, causal: bool, device: torch.device,
                      backward: bool = True) -> BlockMask:
    """The BlockMask of local + global attention for L queries and G + L keys (``backward``:
    also the transposed table that the backward pass reads)."""
    bounds = torch.tensor([num_global, radius], device=device)
    return _window_mask(bounds, causal, *block_table(length, num_global, radius, causal, device),
                        (length, num_global + length), backward)


def _window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: torch.Tensor,
                      kv_num: torch.Tensor, kv_indices: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    mask = _window_mask(bounds, causal, kv_num, kv_indices, (q.shape[2], k.shape[2]), torch.is_grad_enabled())
    return flex_attention(q, k, v, block_mask=mask, scale=scale)


@functools.cache
def _compiled_window_attention():
    return torch.compile(_window_attention, dynamic=True)


@functools.lru_cache(maxsize=32)
def _eager_inputs(length: int, num_global: int, radius: int, causal: bool, device: torch.device):
    """Eager calls reuse the table and bounds of a length seen before (pure functions of the
    arguments; building them is a dozen small kernels, noticeable next to a short sequence)."""
    bounds = torch.tensor([num_global, radius], device=device)
    return (bounds, *block_table(length, num_global, radius, causal, device))


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

    q, k, v = heads(layer.q_proj(x)), heads(with_globals(layer.k_proj)), heads(with_globals(layer.v_proj))
    if torch.compiler.is_compiling():
        bounds = torch.tensor([g, layer.radius], device=x.device)
        out = _window_attention(q, k, v, bounds, *block_table(length, g, layer.radius, layer.causal, x.device),
                                layer.causal, layer.scale)
    else:
        out = _compiled_window_attention()(q, k, v, *_eager_inputs(length, g, layer.radius, layer.causal, x.device),
                                           layer.causal, layer.scale)
    return out.transpose(1, 2).reshape(b, length, e)
