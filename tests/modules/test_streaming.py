"""Streaming: for every causal layer, any chunking of x through ``step`` equals ``forward(x)``.

Axes: layer x chunking. fp32: the two evaluation orders differ by fp32 rounding only; the
issue's bound is rel err <= 1e-5 (measured worst here ~1e-6), while a wrong cache position or
a lost state gives O(1) errors.
"""

from __future__ import annotations

import random

import pytest
import torch

from hvlm_export.modules.stack import build_stack
from hvlm_export.modules import (
    CrossMemoryAttention,
    HierarchicalAttentionBlock,
    LinearAttentionBlock,
    LocalGlobalAttention,
    MambaLayer,
    PerformerAttention,
    StridedAttention,
)

REL = 1e-5
LENGTH = 23

LAYERS = {
    "mamba": lambda: MambaLayer(32, state_size=8),
    "performer_softmax": lambda: PerformerAttention(32, 4, causal=True, chunk_size=8),
    "performer_relu": lambda: PerformerAttention(32, 4, kernel="relu", causal=True, chunk_size=8),
    "performer_elu": lambda: PerformerAttention(32, 4, kernel="elu", causal=True, chunk_size=8),
    "strided": lambda: StridedAttention(32, 4, stride=3, causal=True),
    "local_global": lambda: LocalGlobalAttention(32, 4, local_window=6, num_global_tokens=2, causal=True),
    "local_global_r0_g0": lambda: LocalGlobalAttention(32, 4, local_window=1, num_global_tokens=0, causal=True),
    "hierarchical_block": lambda: HierarchicalAttentionBlock("local_global", 32, 4, local_window=4, causal=True),
    "hierarchical_strided": lambda: HierarchicalAttentionBlock("strided", 32, 4, stride=2, causal=True),
    "linear_block_mamba": lambda: LinearAttentionBlock("mamba", 32, state_size=8),
    "linear_block_performer": lambda: LinearAttentionBlock("performer", 32, 4, causal=True, chunk_size=4),
    "stack": lambda: build_stack({"name": "s", "dim": 32, "num_heads": 4, "blocks": [
        {"attention_type": "mamba", "state_size": 4}, {"attention_type": "strided", "stride": 2, "causal": True},
        {"attention_type": "local_global", "local_window": 4, "causal": True},
        {"attention_type": "performer", "causal": True, "chunk_size": 4}]}),
}
FIXED_SIZE = ["mamba", "performer_softmax", "local_global", "linear_block_mamba", "hierarchical_block"]


def _chunkings(length: int) -> dict[str, list[int]]:
    rng = random.Random(0)
    cuts = sorted(rng.sample(range(1, length), 5))
    return {
        "token_by_token": [1] * length,
        "prefill_then_tokens": [10] + [1] * (length - 10),
        "random": [b - a for a, b in zip([0, *cuts], [*cuts, length], strict=True)],
        "one_chunk": [length],
    }


def _stream(layer, x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, dict]:
    state = layer.init_state(x.shape[0])
    outs, start = [], 0
    for size in sizes:
        y, state = layer.step(x[:, start:start + size], state)
        outs.append(y)
        start += size
    return torch.cat(outs, dim=1), state


@torch.no_grad()
@pytest.mark.parametrize("chunking", list(_chunkings(LENGTH)))
@pytest.mark.parametrize("name", list(LAYERS))
def test_any_chunking_equals_forward(name, chunking):
    torch.manual_seed(0)
    layer = LAYERS[name]().eval()
    x = torch.randn(2, LENGTH, 32)
    want = layer(x)
    got, _ = _stream(layer, x, _chunkings(LENGTH)[chunking])
    err = ((got - want).norm() / want.norm()).item()
    assert err < REL, f"{name} {chunking}: rel err {err:.3g}"


@torch.no_grad()
@pytest.mark.parametrize("name", FIXED_SIZE)
def test_state_size_is_fixed(name):
    layer = LAYERS[name]().eval()
    x = torch.randn(1, 60, 32)
    _, after_one = _stream(layer, x[:, :1], [1])
    _, after_sixty = _stream(layer, x, [7] * 8 + [4])
    assert {k: v.shape for k, v in after_one.items()} == {k: v.shape for k, v in after_sixty.items()}


@torch.no_grad()
def test_strided_cache_grows_by_the_tokens_fed():
    layer = LAYERS["strided"]().eval()
    _, state = _stream(layer, torch.randn(2, 9, 32), [4, 5])
    assert state["k"].shape == (2, 4, 9, 8)


@torch.no_grad()
def test_state_of_another_sample_never_mixes():
    """Streaming a batch of two equals streaming each sample alone."""
    layer = LAYERS["stack"]().eval()
    x = torch.randn(2, 12, 32)
    both, _ = _stream(layer, x, [5, 7])
    alone, _ = _stream(layer, x[1:], [5, 7])
    assert torch.allclose(both[1:], alone, atol=1e-6)


@pytest.mark.parametrize("layer", [StridedAttention(32, 4), LocalGlobalAttention(32, 4), PerformerAttention(32, 4),
                                   CrossMemoryAttention(32, 4), HierarchicalAttentionBlock("cross_memory", 32, 4)],
                         ids=lambda m: type(m).__name__)
def test_non_causal_layers_refuse_to_stream(layer):
    with pytest.raises(ValueError, match="cannot stream"):
        layer.init_state(1)
    with pytest.raises(ValueError, match="cannot stream"):
        layer.step(torch.randn(1, 2, 32), {})


@pytest.mark.parametrize("mutate, error, match", [
    (lambda s: s.pop("ssm"), ValueError, r"missing \['ssm'\]"),
    (lambda s: s.update(extra=torch.zeros(1)), ValueError, r"unexpected \['extra'\]"),
    (lambda s: s.update(ssm=torch.zeros(2, 64, 9)), ValueError, "state 'ssm' has size 9 on axis 2"),
    (lambda s: s.update(ssm=torch.zeros(3, 64, 8)), ValueError, "state 'ssm' has size 3 on axis 0"),
    (lambda s: s.update(ssm=torch.zeros(2, 64)), ValueError, "state 'ssm' must have rank 3"),
    (lambda s: s.update(ssm=torch.zeros(2, 64, 8, dtype=torch.float64)), TypeError, "state 'ssm' must be float32"),
    (lambda s: s.update(conv=[0.0]), TypeError, "state 'conv' must be a torch.Tensor"),
])
def test_bad_state_is_a_clear_error(mutate, error, match):
    layer = LAYERS["mamba"]()
    state = layer.init_state(2)
    mutate(state)
    with pytest.raises(error, match=match):
        layer.step(torch.randn(2, 3, 32), state)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        LAYERS["mamba"]().init_state(bad)
