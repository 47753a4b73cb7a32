"""MambaLayer: parameter compatibility with mamba-ssm's Mamba block and its reference math."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hvlm_export.modules import MambaLayer
from tests.references import scan_reference_f64


def reference_state_dict_shapes(dim, d_state=16, d_conv=4, expand=2):
    """Keys and shapes of state_spaces/mamba ``Mamba(d_model=dim)`` (mamba_simple.py, defaults
    conv_bias=True, bias=False), written from its documented structure."""
    di, r = expand * dim, math.ceil(dim / 16)
    return {
        "in_proj.weight": (2 * di, dim),
        "conv1d.weight": (di, 1, d_conv),
        "conv1d.bias": (di,),
        "x_proj.weight": (r + 2 * d_state, di),
        "dt_proj.weight": (di, r),
        "dt_proj.bias": (di,),
        "A_log": (di, d_state),
        "D": (di,),
        "out_proj.weight": (dim, di),
    }


def reference_forward(sd, x, d_state, d_conv):
    """The non-fused forward of mamba-ssm's Mamba, in float64, from its state_dict."""
    x = x.double()
    sd = {k: v.double() for k, v in sd.items()}
    length = x.shape[1]
    di = sd["D"].shape[0]
    r = sd["dt_proj.weight"].shape[1]
    xz = torch.einsum("ed,bld->bel", sd["in_proj.weight"], x)
    xs, z = xz[:, :di], xz[:, di:]
    xs = F.conv1d(xs, sd["conv1d.weight"], sd["conv1d.bias"], padding=d_conv - 1, groups=di)[..., :length]
    xs = F.silu(xs)
    x_dbl = torch.einsum("ed,bdl->bel", sd["x_proj.weight"], xs)
    dt, b_in, c_in = x_dbl[:, :r], x_dbl[:, r:r + d_state], x_dbl[:, r + d_state:]
    dt = torch.einsum("dr,brl->bdl", sd["dt_proj.weight"], dt)
    y, _ = scan_reference_f64(xs, dt, -torch.exp(sd["A_log"]), b_in, c_in, sd["D"], z,
                              delta_bias=sd["dt_proj.bias"], delta_softplus=True)
    return torch.einsum("ed,bdl->ble", sd["out_proj.weight"], y)


@pytest.mark.parametrize("dim, d_state", [(64, 16), (40, 5)])
def test_state_dict_layout_matches_reference(dim, d_state):
    layer = MambaLayer(dim=dim, state_size=d_state)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == reference_state_dict_shapes(dim, d_state)


@pytest.mark.parametrize("length", [1, 5, 33, 80])
@pytest.mark.parametrize("scan_impl", ["op", "reference"])
def test_reference_state_dict_loads_strict_and_matches(length, scan_impl):
    dim, d_state = 32, 8
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(*s, generator=g) * 0.3 for k, s in reference_state_dict_shapes(dim, d_state).items()}
    sd["A_log"] = torch.log(torch.rand(2 * dim, d_state, generator=g) * 4 + 0.5)
    layer = MambaLayer(dim=dim, state_size=d_state, scan_impl=scan_impl)
    layer.load_state_dict(sd, strict=True)
    x = torch.randn(2, length, dim, generator=g)
    want = reference_forward(sd, x, d_state, 4)
    got = layer(x)
    err = ((got.double() - want).abs().max() / want.abs().max()).item()
    # fp32 module vs float64 reference: a few ulps through 4 matmuls and the scan
    assert err < 1e-5, f"relative max err {err:.3g}"


def test_initialisation_follows_reference():
    layer = MambaLayer(dim=64, state_size=16, dt_min=1e-3, dt_max=1e-1)
    assert torch.allclose(layer.A_log, torch.log(torch.arange(1, 17.0)).repeat(128, 1))
    assert torch.equal(layer.D, torch.ones(128))
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001, "softplus(bias) is the initial dt"
    bound = layer.dt_rank**-0.5
    assert layer.dt_proj.weight.abs().max() <= bound
    assert layer.A_log.dtype == torch.float32
    assert getattr(layer.A_log, "_no_weight_decay", False) and getattr(layer.D, "_no_weight_decay", False)


def test_causal():
    layer = MambaLayer(dim=32, state_size=4).eval()
    x = torch.randn(1, 30, 32)
    y = layer(x)
    x2 = x.clone()
    x2[:, 20:] = torch.randn(1, 10, 32)
    assert torch.allclose(y[:, :20], layer(x2)[:, :20], atol=1e-6), "future tokens must not leak"


def test_bad_arguments():
    with pytest.raises(ValueError, match="scan_impl"):
        MambaLayer(dim=32, scan_impl="cuda")
    with pytest.raises(ValueError, match="dt_min"):
        MambaLayer(dim=32, dt_min=0.5, dt_max=0.1)


def _conv_silu_cpu(x, weight, bias):
    """torch.ops.hvlm.causal_conv1d_silu's contract on the CPU (the op is CUDA-only): the
    causal depthwise conv + SiLU of x (B, L, D), in the layout of ``conv_output``."""
    from hvlm_export.ops.causal_conv import conv_output

    length, dim = x.shape[1], x.shape[2]
    y = F.silu(F.conv1d(x.transpose(1, 2), weight, bias, padding=weight.shape[-1] - 1, groups=dim)[..., :length])
    return conv_output(x).copy_(y.transpose(1, 2))


@pytest.mark.parametrize("batch, bias", [(1, False), (3, False), (2, True)])
def test_fused_channel_first_path_computes_the_layer(monkeypatch, batch, bias):
    """The CUDA inference path's channel-first projections (one bmm each into (B, rows, L)
    memory), with the conv op stood in for on the CPU, against the float64 reference; the
    scan gets unit-L-stride inputs, which the CUDA kernel reads without copies."""
    from hvlm_export.modules import mamba as mamba_module

    torch.manual_seed(batch)
    layer = MambaLayer(dim=24, state_size=5, bias=bias).double().eval()
    x = torch.randn(batch, 37, 24, dtype=torch.float64)
    seen, real_scan = [], mamba_module.selective_scan

    def scan(u, delta, A, B, C, **kwargs):
        seen.extend(t.stride(2) for t in (u, delta, B, C, kwargs["z"]))
        return real_scan(u, delta, A, B, C, **kwargs)

    monkeypatch.setattr(torch.ops.hvlm, "causal_conv1d_silu", _conv_silu_cpu, raising=False)
    monkeypatch.setattr(mamba_module, "selective_scan", scan)
    with torch.no_grad():
        got = layer._fused_forward(x)
        assert seen == [1] * 5  # u, delta, B, C, z: steps adjacent in memory
        want = layer(x)  # the CPU path (nn.Conv1d, (B, L, .) projections)
    # the scan op computes in float32; without numba its blocked torch kernel may round the two
    # layouts differently (~1e-10 absolute here, seen where numba is not installed)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    if not bias:  # mamba-ssm's layer has no in / out projection bias
        ref = reference_forward(layer.state_dict(), x, 5, layer.conv1d.kernel_size[0])
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        assert err < 1e-5, f"relative max err {err:.3g}"  # the CPU scan op runs in float32 whatever the dtype


@pytest.mark.parametrize("shape, transposed", [((2, 9, 6), False), ((2, 9, 6), True), ((1, 1, 6), True)])
def test_conv_output_keeps_the_input_layout(shape, transposed):
    """hvlm::causal_conv1d_silu's output (and its fake's): channel-first stays channel-first."""
    from hvlm_export.ops.causal_conv import conv_output

    b, length, d = shape
    x = torch.randn(b, d, length).transpose(1, 2) if transposed else torch.randn(b, length, d)
    out = conv_output(x)
    assert out.shape == x.shape
    if transposed and length > 1:
        assert out.stride() == (d * length, 1, length)  # a (B, L, D) view of contiguous (B, D, L)
    else:
        assert out.is_contiguous()
