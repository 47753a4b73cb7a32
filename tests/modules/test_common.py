"""Properties every registered mechanism must have, iterated over the registry."""

from __future__ import annotations

import pytest
import torch

from hvlm_export.modules import LocalGlobalAttention, PerformerAttention, StridedAttention
from hvlm_export.registry import REGISTRY

NAMES = list(REGISTRY)


def _build(name):
    spec = REGISTRY[name]
    torch.manual_seed(0)
    return spec, spec.build(small=True)


def _inputs(spec, model, batch, length, seed=0):
    return spec.example_inputs(model, batch=batch, seq_len=length, seed=seed)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_over_critical_lengths(name):
    spec, model = _build(name)
    for length in spec.lengths(spec.kwargs(small=True)):
        for batch in (1, 3):
            inputs = _inputs(spec, model, batch, length)
            y = model(*inputs)
            assert y.shape == inputs[0].shape, f"L={length} B={batch}"
            assert torch.isfinite(y).all(), f"non-finite output at L={length} B={batch}"


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name):
    """A sample's output does not depend on the other samples in its batch."""
    spec, model = _build(name)
    batch = _inputs(spec, model, 3, 21)
    other = _inputs(spec, model, 3, 21, seed=7)
    mixed = tuple(torch.cat([b[:1], 25 * o[1:]]) for b, o in zip(batch, other, strict=True))
    alone = model(*(t[:1] for t in batch))
    together = model(*mixed)[:1]
    err = (alone - together).abs().max().item()
    assert err < 1e-5, f"max abs err {err:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_parameter(name):
    spec, model = _build(name)
    model.train()
    inputs = tuple(t.requires_grad_(True) for t in _inputs(spec, model, 2, 19))
    model(*inputs).square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{pname} gradient is zero or not finite"
    assert inputs[0].grad is not None and inputs[0].grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_are_rejected(name):
    spec, model = _build(name)
    dim = spec.kwargs(small=True)["dim"]
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(4, dim))  # wrong rank
    with pytest.raises(ValueError, match="last dimension"):
        model(torch.randn(2, 5, dim + 1))
    with pytest.raises(TypeError, match="floating"):
        model(torch.ones(2, 5, dim, dtype=torch.long))


# Mamba-based entries have no heads, so no divisibility rule to test.
HEADED = [n for n in NAMES if "num_heads" in REGISTRY[n].defaults and REGISTRY[n].defaults.get("attention_type") != "mamba"]


@pytest.mark.parametrize("name", HEADED)
def test_dim_not_divisible_by_heads(name):
    spec = REGISTRY[name]
    kwargs = spec.kwargs(small=True)
    with pytest.raises(ValueError, match="divisible"):
        spec.factory(**{**kwargs, "num_heads": 5, "dim": 64})


@pytest.mark.parametrize(
    "factory_kwargs, error",
    [
        ({"attention_type": "strided", "stride": 0}, ValueError),
        ({"attention_type": "local_global", "local_window": 0}, ValueError),
        ({"attention_type": "strided", "stride": 2.5}, TypeError),
        ({"attention_type": "sliding"}, ValueError),
        ({"attention_type": "strided", "dropout": 1.5}, ValueError),
    ],
)
def test_bad_constructor_arguments(factory_kwargs, error):
    from hvlm_export.modules import HierarchicalAttentionBlock

    with pytest.raises(error):
        HierarchicalAttentionBlock(dim=32, num_heads=4, **factory_kwargs)


def test_memory_only_for_cross_memory():
    from hvlm_export.modules import HierarchicalAttentionBlock

    block = HierarchicalAttentionBlock("strided", dim=32, num_heads=4, stride=2)
    with pytest.raises(ValueError, match="does not use it"):
        block(torch.randn(1, 4, 32), torch.randn(1, 3, 32))


@pytest.mark.parametrize("layer, torch_impl, bad", [
    (lambda **kw: PerformerAttention(32, 4, **kw), "torch", "cuda"),
    (lambda **kw: StridedAttention(32, 4, stride=3, **kw), "torch", "blocked"),
    (lambda **kw: LocalGlobalAttention(32, 4, local_window=8, **kw), "blocked", "torch"),
], ids=["performer", "strided", "local_global"])
def test_fused_impl_choices(layer, torch_impl, bad):
    """The layers with a fused CUDA kernel: 'auto' by default, an unknown impl is a
    ValueError naming the choices, and on the CPU 'auto' computes exactly the torch path."""
    with pytest.raises(ValueError, match="valid choices are auto, "):
        layer(impl=bad)
    auto, torch_path = layer(), layer(impl=torch_impl)
    torch_path.load_state_dict(auto.state_dict())
    x = torch.randn(1, 9, 32)
    assert torch.equal(auto(x), torch_path(x)), "on the CPU 'auto' is the torch path"
    assert "impl='auto'" in repr(auto) and f"impl={torch_impl!r}" in repr(torch_path)
