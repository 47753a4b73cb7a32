"""Opt-in fused q / k / v projections (hvlm_export/modules/_fused_projections.py): same outputs as
the three projections, one GEMM where it applies, rebuilt when the weights change, never under
autograd or tracing."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from hvlm_export.modules import (CrossMemoryAttention, PerformerAttention, StridedAttention, fuse_projections,
                                 unfuse_projections)
from hvlm_export.registry import REGISTRY


def _calls(layer):
    """Counts of forward calls of q_proj, k_proj, v_proj (forward hooks)."""
    counts = {"q": 0, "k": 0, "v": 0}
    for name in counts:
        def hook(*_, name=name):
            counts[name] += 1
        getattr(layer, f"{name}_proj").register_forward_hook(hook)
    return counts


@pytest.mark.parametrize("name", list(REGISTRY))
def test_fused_model_matches_unfused(name):
    torch.manual_seed(0)
    model = REGISTRY[name].build(small=True)
    x = torch.randn(2, 37, REGISTRY[name].kwargs(small=True)["dim"])
    with torch.no_grad():
        want = model(x)
        fused = fuse_projections(model)
        got = model(x)
        unfuse_projections(model)
        again = model(x)
    assert fused == (0 if name in ("mamba", "linear_block") else 1)  # linear_block: the Mamba block
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again, want, rtol=0, atol=0)


def test_one_gemm_for_self_attention_and_state_dict_unchanged():
    layer = CrossMemoryAttention(dim=32, num_heads=4).eval()
    keys = list(layer.state_dict())
    calls = _calls(layer)
    x = torch.randn(1, 9, 32)
    with torch.no_grad():
        layer.fuse_projections()
        layer(x)
        assert calls == {"q": 0, "k": 0, "v": 0}
        layer(x, torch.randn(1, 5, 32))  # cross-attention: k / v from the memory, separately
        assert calls == {"q": 1, "k": 1, "v": 1}
    assert list(layer.state_dict()) == keys
    layer.unfuse_projections()
    with torch.no_grad():
        layer(x)
    assert calls == {"q": 2, "k": 2, "v": 2}


def test_rebuilt_when_weights_change():
    torch.manual_seed(0)
    layer, other = PerformerAttention(dim=32, num_heads=4).eval(), PerformerAttention(dim=32, num_heads=4).eval()
    x = torch.randn(2, 11, 32)
    layer.fuse_projections()
    with torch.no_grad():
        layer(x)
        layer.load_state_dict(other.state_dict())  # new values, same tensors
        torch.testing.assert_close(layer(x), other(x))
        layer.k_proj.weight.mul_(2.0)  # in place, under no_grad
        other.k_proj.weight.mul_(2.0)
        torch.testing.assert_close(layer(x), other(x))
        layer.double()  # new tensors and dtype
        other.double()
        torch.testing.assert_close(layer(x.double()), other(x.double()))
        # writes through .data are invisible to the check (documented): fusing again picks them up
        layer.v_proj.weight.data.copy_(torch.zeros_like(layer.v_proj.weight))
        other.v_proj.weight.data.zero_()
        layer.fuse_projections()
        torch.testing.assert_close(layer(x.double()), other(x.double()))


def test_training_and_tracing_keep_the_three_projections():
    layer = CrossMemoryAttention(dim=16, num_heads=2)
    layer.fuse_projections()
    calls = _calls(layer)
    x = torch.randn(1, 6, 16)
    layer(x).sum().backward()  # autograd: the separate projections, whose weights get gradients
    assert calls == {"q": 1, "k": 1, "v": 1} and layer.q_proj.weight.grad is not None
    layer.eval().requires_grad_(False)  # no autograd: only the tracing check keeps the projections
    with torch.no_grad():
        want = layer(x)
    assert calls["q"] == 1
    exported = torch.export.export(layer, (x,))
    assert calls["q"] > 1  # traced through the three projections
    torch.testing.assert_close(exported.module()(x), want)
    clone = copy.deepcopy(layer)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), want)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_fused_views_reach_the_sparse_kernel_without_copies():
    """The fused CUDA sparse path takes q, k, v as views of the one GEMM's output; the kernel's
    launcher accepts them as they are (one set of strides, heads adjacent)."""
    from hvlm_export.ops.sparse_attention_triton import _shared_layout

    layer = StridedAttention(dim=32, num_heads=4).eval()
    layer.fuse_projections()
    with torch.no_grad():
        q, k, v = (t.view(2, 10, 4, 8) for t in layer._project_qkv(torch.randn(2, 10, 32)))
    shared = _shared_layout(q, k, v)
    assert all(a is b for a, b in zip(shared, (q, k, v), strict=True))
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()


@pytest.mark.parametrize("layer", [
    lambda: StridedAttention(dim=32, num_heads=4, causal=True),
    lambda: PerformerAttention(dim=32, num_heads=4, causal=True),
], ids=["strided_causal", "performer_causal"])
def test_streaming_steps_with_fused_projections(layer):
    """The streaming steps project through ``_qkv``: fused, they give the same outputs."""
    torch.manual_seed(0)
    layer = layer().eval()
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        want = layer(x)
        layer.fuse_projections()
        calls = _calls(layer)
        state, outs = layer.init_state(2), []
        for chunk in x.split([5, 1, 6], dim=1):
            out, state = layer.step(chunk, state)
            outs.append(out)
    assert calls == {"q": 0, "k": 0, "v": 0}
    torch.testing.assert_close(torch.cat(outs, dim=1), want, rtol=1e-5, atol=1e-6)


def test_only_plain_linear_projections_fuse_and_a_replaced_one_ends_the_fusion():
    class Scaled(torch.nn.Linear):  # stands for an adapter: its output is not its weight's GEMM
        def forward(self, x):
            return 2 * super().forward(x)

    torch.manual_seed(0)
    layer = CrossMemoryAttention(dim=16, num_heads=2).eval()
    x = torch.randn(1, 5, 16)
    layer.fuse_projections()
    with torch.no_grad():
        layer(x)
        wrapped = Scaled(16, 16)
        wrapped.load_state_dict(layer.q_proj.state_dict())
        layer.q_proj = wrapped  # replaced after fusing: the layer uses its three projections again
        got = layer(x)
        layer.unfuse_projections()
        torch.testing.assert_close(got, layer(x))
    with pytest.raises(ValueError, match="cannot fuse a Scaled projection"):
        layer.fuse_projections()
    model = torch.nn.Sequential(layer, CrossMemoryAttention(dim=16, num_heads=2))
    assert fuse_projections(model) == 1 and layer._fused_qkv is None
