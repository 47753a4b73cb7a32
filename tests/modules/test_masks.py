"""Padding masks (DESIGN.md section 9) on every mechanism, block and config stack.

A right-padded sample's real positions equal the unpadded sample's output (float64, so any
leak of padding shows far above rounding), padded positions output exactly 0, and no mask
is the same computation as before. The reference is always the layer run on each sample
alone, cut to its real tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hvlm_export.modules import (
    CrossMemoryAttention,
    HierarchicalAttentionBlock,
    LinearAttentionBlock,
    LocalGlobalAttention,
    MambaLayer,
    PerformerAttention,
    StridedAttention,
)
from hvlm_export.modules.stack import build_stack

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "attention"
DIM = 32

LAYERS = {
    "strided": lambda: StridedAttention(DIM, 4, stride=3),
    "strided_causal": lambda: StridedAttention(DIM, 4, stride=3, causal=True),
    "local_global": lambda: LocalGlobalAttention(DIM, 4, local_window=8, num_global_tokens=2),
    "local_global_no_globals": lambda: LocalGlobalAttention(DIM, 4, local_window=6, num_global_tokens=0),
    "local_global_causal": lambda: LocalGlobalAttention(DIM, 4, local_window=8, causal=True),
    "local_global_wide_window": lambda: LocalGlobalAttention(DIM, 4, local_window=200, num_global_tokens=0),
    "cross_memory_self": lambda: CrossMemoryAttention(DIM, 4),
    "performer": lambda: PerformerAttention(DIM, 4, causal=False),
    "performer_causal": lambda: PerformerAttention(DIM, 4, causal=True, chunk_size=8),
    "performer_relu": lambda: PerformerAttention(DIM, 4, kernel="relu"),
    "performer_elu_causal": lambda: PerformerAttention(DIM, 4, kernel="elu", causal=True, chunk_size=8),
    "mamba": lambda: MambaLayer(DIM, state_size=4),
    "block_strided": lambda: HierarchicalAttentionBlock("strided", DIM, 4, stride=2),
    "block_local_global": lambda: HierarchicalAttentionBlock("local_global", DIM, 4, local_window=8),
    "block_performer": lambda: LinearAttentionBlock("performer", DIM, 4),
    "block_mamba": lambda: LinearAttentionBlock("mamba", DIM, state_size=4),
    "stack_linear": lambda: build_stack(CONFIGS / "linear_attention.yaml"),
}
MEMORY_LAYERS = {
    "cross_memory": lambda: CrossMemoryAttention(DIM, 4),
    "block_cross_memory": lambda: HierarchicalAttentionBlock("cross_memory", DIM, 4),
    "stack_sparse": lambda: build_stack(CONFIGS / "sparse_attention.yaml"),
}
REAL = [29, 13, 1]  # real tokens per sample; the batch is padded to 29
MEMORY_REAL = [9, 2, 5]


def _mask(lengths: list[int], total: int, dtype=torch.int64) -> torch.Tensor:
    return (torch.arange(total)[None] < torch.tensor(lengths)[:, None]).to(dtype)


def _build(factory) -> torch.nn.Module:
    torch.manual_seed(0)
    return factory().double().eval()


def _width(layer) -> int:
    return layer.config.dim if hasattr(layer, "config") else layer.dim


def _check(padded: torch.Tensor, alone: list[torch.Tensor]) -> None:
    for i, (want, n) in enumerate(zip(alone, REAL, strict=True)):
        got = padded[i : i + 1, :n]
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err < 1e-12, f"sample {i}: real positions differ from the unpadded run by {err:.3g}"
        assert torch.equal(padded[i, n:], torch.zeros_like(padded[i, n:])), f"sample {i}: padding is not 0"


@torch.no_grad()
@pytest.mark.parametrize("name", list(LAYERS))
def test_padded_sample_equals_the_unpadded_one(name):
    layer = _build(LAYERS[name])
    x = torch.randn(3, max(REAL), _width(layer), dtype=torch.float64)
    x[1:, 13:] = 1e3 * torch.randn_like(x[1:, 13:])  # loud padding: any leak shows
    y = layer(x, attention_mask=_mask(REAL, x.shape[1]))
    _check(y, [layer(x[i : i + 1, :n]) for i, n in enumerate(REAL)])


@torch.no_grad()
@pytest.mark.parametrize("name", list(MEMORY_LAYERS))
def test_padded_memory_equals_the_unpadded_one(name):
    layer = _build(MEMORY_LAYERS[name])
    width = _width(layer)
    x = torch.randn(3, max(REAL), width, dtype=torch.float64)
    memory = torch.randn(3, max(MEMORY_REAL), width, dtype=torch.float64)
    memory[:, 2:] += 50.0 * (torch.arange(max(MEMORY_REAL))[2:, None] >= torch.tensor(MEMORY_REAL)[:, None, None])
    y = layer(x, memory, _mask(REAL, x.shape[1]), _mask(MEMORY_REAL, memory.shape[1]))
    _check(y, [layer(x[i : i + 1, :n], memory[i : i + 1, : MEMORY_REAL[i]]) for i, n in enumerate(REAL)])


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.int64, torch.float32, torch.float64])
def test_mask_dtypes_agree(dtype):
    layer = _build(LAYERS["local_global"])
    x = torch.randn(3, max(REAL), DIM, dtype=torch.float64)
    want = layer(x, attention_mask=_mask(REAL, x.shape[1], torch.bool))
    assert torch.equal(layer(x, attention_mask=_mask(REAL, x.shape[1], dtype)), want)


@torch.no_grad()
@pytest.mark.parametrize("name", ["strided", "local_global", "performer", "mamba", "block_local_global"])
def test_no_mask_and_a_full_mask_are_the_unmasked_layer(name):
    layer = _build(LAYERS[name])
    x = torch.randn(2, 21, DIM, dtype=torch.float64)
    want = layer(x)
    assert torch.equal(layer(x, attention_mask=None), want)
    full = layer(x, attention_mask=torch.ones(2, 21, dtype=torch.int64))
    assert ((full - want).abs().max() / want.abs().max()).item() < 1e-12


@torch.no_grad()
def test_a_sample_without_real_memory_gets_a_finite_output():
    """Softmax over no key at all is undefined: the attention output is 0 (the layer returns
    its output projection's bias), never NaN."""
    layer = _build(MEMORY_LAYERS["cross_memory"])
    x, memory = torch.randn(2, 5, DIM, dtype=torch.float64), torch.randn(2, 4, DIM, dtype=torch.float64)
    y = layer(x, memory, memory_mask=torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    assert torch.isfinite(y).all()
    assert torch.allclose(y[1], layer.out_proj.bias.expand(5, -1))


@torch.no_grad()
def test_an_all_padding_sample_is_zero_and_finite():
    for name in ("strided", "local_global_no_globals", "performer", "cross_memory_self"):
        layer = _build(LAYERS[name])
        y = layer(torch.randn(2, 9, DIM, dtype=torch.float64), attention_mask=_mask([9, 0], 9))
        assert torch.isfinite(y).all() and torch.equal(y[1], torch.zeros_like(y[1])), name


@pytest.mark.parametrize(
    "mask, error, match",
    [
        ([[1, 1, 1]], TypeError, "attention_mask must be a torch.Tensor of shape \\(B, L\\) = \\(2, 3\\)"),
        (torch.ones(2, 4), ValueError, "got shape \\(2, 4\\)"),
        (torch.ones(3, 3), ValueError, "got shape \\(3, 3\\)"),
        (torch.ones(2, 3, 1), ValueError, "got shape \\(2, 3, 1\\)"),
        (torch.ones(2, 3, dtype=torch.complex64), TypeError, "bool, integer or floating"),
    ],
)
def test_bad_masks_are_clear_errors(mask, error, match):
    layer = LocalGlobalAttention(DIM, 4, local_window=4)
    with pytest.raises(error, match=match):
        layer(torch.randn(2, 3, DIM), attention_mask=mask)


def test_memory_mask_needs_a_memory():
    with pytest.raises(ValueError, match="memory_mask was given without a memory"):
        CrossMemoryAttention(DIM, 4)(torch.randn(1, 3, DIM), memory_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="memory_mask was given to a 'strided' block"):
        HierarchicalAttentionBlock("strided", DIM, 4)(torch.randn(1, 3, DIM), memory_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="memory_mask must have shape"):
        CrossMemoryAttention(DIM, 4)(torch.randn(1, 3, DIM), torch.randn(1, 5, DIM), memory_mask=torch.ones(1, 3))
