"""PerformerAttention against dense kernelised attention and exact softmax attention."""

from __future__ import annotations

import pytest
import torch

from hvlm_export.modules import PerformerAttention
from tests.references import dense_attention, dense_kernelised


def _x(batch, length, dim, seed=0):
    return torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kernel", ["softmax", "relu", "elu"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("length", [1, 7, 8, 9, 30])
def test_linear_form_matches_dense_kernel(kernel, causal, length):
    layer = PerformerAttention(dim=32, num_heads=4, kernel=kernel, causal=causal, chunk_size=8).double()
    x = _x(2, length, 32)
    err = (layer(x) - dense_kernelised(layer, x)).abs().max().item()
    assert err < 1e-10, f"max abs err {err:.3g}"


def test_softmax_kernel_converges_to_exact_softmax():
    """The FAVOR+ estimate of softmax attention improves as nb_features grows."""
    torch.manual_seed(0)
    errors = []
    for m in (8, 128, 4096):
        layer = PerformerAttention(dim=16, num_heads=1, nb_features=m).double()
        with torch.no_grad():  # small logits keep the estimator's variance modest
            for p in (layer.q_proj, layer.k_proj):
                p.weight.mul_(0.3)
        x = _x(1, 24, 16)
        exact = dense_attention(layer, x, torch.ones(24, 24, dtype=torch.bool))
        errors.append((layer(x) - exact).abs().mean().item())
    assert errors[2] < errors[1] < errors[0], f"errors by nb_features (8, 128, 4096): {errors}"
    assert errors[2] < 0.02, f"mean abs err at 4096 features: {errors[2]:.3g}"


def test_projection_is_a_fixed_buffer():
    layer = PerformerAttention(dim=32, num_heads=4)
    assert "projection_matrix" in dict(layer.named_buffers())
    assert layer.projection_matrix.shape == (layer.nb_features, 8)
    assert layer.nb_features == int(8 * torch.log(torch.tensor(8.0)).item())
    x = torch.randn(2, 10, 32)
    before = layer.projection_matrix.clone()
    assert torch.equal(layer(x), layer(x)), "forward must never redraw features"
    assert torch.equal(before, layer.projection_matrix)
    layer.redraw_projection()
    assert not torch.equal(before, layer.projection_matrix)


def test_projection_rows_are_orthogonal_within_blocks():
    layer = PerformerAttention(dim=64, num_heads=4, nb_features=16)
    w = layer.projection_matrix
    unit = w / w.norm(dim=1, keepdim=True)
    gram = unit @ unit.T
    assert torch.allclose(gram, torch.eye(16), atol=1e-5), "a block of Dh rows must be orthogonal"


def test_stabiliser_is_per_sequence():
    """A sample's output does not depend on the other samples of the batch, even when their
    magnitudes are wildly different (a batch-global max would underflow the small one)."""
    layer = PerformerAttention(dim=32, num_heads=4).eval()
    a = torch.randn(1, 12, 32)
    b = 30 * torch.randn(1, 12, 32)
    alone = layer(a)
    together = layer(torch.cat([a, b]))[:1]
    assert torch.allclose(alone, together, atol=1e-6), (alone - together).abs().max()


def test_fp16_input_stays_finite():
    layer = PerformerAttention(dim=32, num_heads=4, causal=True)
    x = (20 * torch.randn(2, 40, 32))
    y = layer.half()(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_bad_kernel():
    with pytest.raises(ValueError, match="valid choices"):
        PerformerAttention(dim=32, num_heads=4, kernel="cosine")


@pytest.mark.parametrize("kwargs", [{}, {"causal": True}, {"kernel": "relu"}])
def test_triton_impl_refuses_what_it_cannot_run(kwargs):
    """impl='triton' never falls back silently: a call it cannot run is a ValueError saying why."""
    layer = PerformerAttention(dim=32, num_heads=4, impl="triton", **kwargs)
    with pytest.raises(ValueError, match="impl='triton' runs the 'softmax' kernel on float16/bfloat16 CUDA"):
        layer(torch.randn(1, 5, 32))


def test_fused_kernel_names_what_it_cannot_serve():
    """The reason the fused path gives (in impl='triton' errors, and 'auto' falls back): another
    kernel, or a sequence longer than the kernels' grid holds."""
    from hvlm_export.ops.favor import MAX_LENGTH

    layer = PerformerAttention(dim=32, num_heads=4)
    assert layer._misfit(torch.empty(1, MAX_LENGTH, 32, device="meta")) is None
    assert "tokens" in layer._misfit(torch.empty(1, MAX_LENGTH + 1, 32, device="meta"))
    assert "kernel='relu'" in PerformerAttention(dim=32, num_heads=4, kernel="relu")._misfit(torch.empty(1, 5, 32))


@pytest.mark.parametrize("kernel", ["softmax", "relu", "elu"])
@pytest.mark.parametrize("chunk", [4, 16, 64])
def test_causal_output_never_sees_the_future(kernel, chunk):
    """Replacing tokens 25..39 by 3x (and 300x) larger ones leaves the outputs at 0..24
    unchanged to fp32 rounding: no stabiliser or epsilon is computed from later tokens."""
    torch.manual_seed(0)
    layer = PerformerAttention(dim=64, num_heads=4, kernel=kernel, causal=True, chunk_size=chunk).eval()
    x = torch.randn(2, 40, 64)
    base = layer(x)[:, :25]
    for scale in (3.0, 300.0):
        y = x.clone()
        y[:, 25:] *= scale
        moved = (layer(y)[:, :25] - base).abs().max().item()
        assert moved <= 1e-6 * base.abs().max().item(), f"scale {scale}: past outputs moved by {moved:.3g}"


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_float32_stays_finite_and_exact_at_large_inputs(causal):
    """Inputs 30-300x unit scale spread the key log-weights over thousands: every frame the
    chunked sums use must stay within exp's range (a per-chunk, not running, frame gave NaN)."""
    layer = PerformerAttention(dim=64, num_heads=4, causal=causal, chunk_size=16)
    x = _x(3, 35, 64, seed=5)
    for scale in (30.0, 300.0):
        with torch.no_grad():
            got = layer.float()(x.float() * scale).double()
            want = layer.double()(x * scale)
        assert torch.isfinite(got).all(), f"scale {scale}: non-finite output"
        rel = ((got - want).norm() / want.norm()).item()
        assert rel < 1e-5, f"scale {scale}: float32 vs float64 relative error {rel:.3g}"
