"""Tensors derived from parameters and kept between inference calls (hvlm_export/modules/_derived.py):
recomputed whenever a source changes in place, moves or is replaced; MambaLayer's scan
parameters use it in inference only."""

from __future__ import annotations

import copy

import pytest
import torch

from hvlm_export.modules import MambaLayer
from hvlm_export.modules import mamba as mamba_module
from hvlm_export.modules._derived import Derived


def _counting(fn):
    calls = []

    def compute(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return compute, calls


@torch.no_grad()
def test_kept_until_a_source_changes():
    compute, calls = _counting(lambda a, b: a * 2 + b)
    derived = Derived(compute)
    a, b = torch.nn.Parameter(torch.randn(5)), torch.randn(5)
    first = derived(a, b)
    assert derived(a, b) is first and len(calls) == 1
    with torch.no_grad():
        a.add_(1.0)  # in place: the version moves
    torch.testing.assert_close(derived(a, b), a.detach() * 2 + b)
    a.data = torch.randn(5)  # other storage, same object
    torch.testing.assert_close(derived(a, b), a.detach() * 2 + b)
    torch.testing.assert_close(derived(a.double(), b.double()), a.detach().double() * 2 + b.double())
    torch.testing.assert_close(derived(a[:4], b[:4]), a.detach()[:4] * 2 + b[:4])  # shape
    assert len(calls) == 5
    derived.invalidate()
    derived(a[:4], b[:4])
    assert len(calls) == 6


def test_computed_in_the_call_under_autograd_and_tracing():
    """A source that records autograd gets a value that carries its gradient, and nothing is
    kept; so does a call while a dispatch mode (a tracer) watches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    compute, calls = _counting(lambda a: a * 3)
    derived = Derived(compute)
    a = torch.nn.Parameter(torch.ones(4))
    derived(a).sum().backward()
    derived(a)
    assert len(calls) == 2 and torch.equal(a.grad, torch.full((4,), 3.0))
    with torch.no_grad(), Watch():
        derived(a)
        derived(a)
    assert len(calls) == 4 and derived._state[0] == ()


@torch.no_grad()
def test_holds_the_storage_of_what_it_kept():
    """The kept sources' storage stays alive, so a new tensor can never take its address and
    pass for the old one (a parameter moved away and back, changed on the way)."""
    derived = Derived(lambda a: a.clone())
    a = torch.nn.Parameter(torch.randn(1024))
    derived(a)
    old = a.data_ptr()
    a.data = torch.randn(1024)
    assert a.data_ptr() != old  # the old storage is still held, so it was not reused
    torch.testing.assert_close(derived(a), a.detach())


@torch.no_grad()
def test_writes_through_data_go_unseen_until_invalidated():
    derived = Derived(lambda a: a.clone())
    a = torch.nn.Parameter(torch.zeros(3))
    derived(a)
    a.data.copy_(torch.ones(3))
    assert derived(a).sum() == 0  # the documented limit
    derived.invalidate()
    assert derived(a).sum() == 3


def test_mamba_keeps_its_scan_parameters_in_inference_only(monkeypatch):
    compute, calls = _counting(mamba_module._scan_params)
    monkeypatch.setattr(mamba_module, "_scan_params", compute)
    torch.manual_seed(0)
    layer = MambaLayer(dim=16, state_size=4).eval()
    fresh = copy.deepcopy(layer)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        layer(x)
        layer(x)
        assert len(calls) == 1
        layer.load_state_dict({k: v + 0.1 if k in ("A_log", "D", "dt_proj.bias") else v
                               for k, v in layer.state_dict().items()})
        fresh.load_state_dict(layer.state_dict())
        torch.testing.assert_close(layer(x), fresh(x))  # fresh computes its own: both see the new values
        assert len(calls) == 3
    y = layer(x)  # autograd: computed in the graph each call, gradients reach the parameters
    y.sum().backward()
    assert len(calls) == 4 and layer.D.grad is not None and layer.A_log.grad is not None


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_mamba_after_a_round_trip_through_another_dtype(dtype):
    """Weights changed while the layer was in another dtype are what it computes with after it
    comes back (the kept parameters are rebuilt, not served from the old storage)."""
    torch.manual_seed(1)
    layer = MambaLayer(dim=16, state_size=4).eval()
    x = torch.randn(1, 7, 16)
    with torch.no_grad():
        layer(x)
        layer.to(dtype)
        layer.D.add_(1.0)
        layer.to(torch.float32)
        want = copy.deepcopy(layer)
        want._kept_params = None
        torch.testing.assert_close(layer(x), want(x))


def test_mamba_computes_its_parameters_in_the_call_under_a_dispatch_mode(monkeypatch):
    """A dispatch mode watching (make_fx / AOT tracing, FakeTensorMode, a FlopCounterMode) sees
    the parameters' ops in every call: nothing is served from the cache (fake tensors have no
    storage to key on, and a traced graph must compute them)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    compute, calls = _counting(mamba_module._scan_params)
    monkeypatch.setattr(mamba_module, "_scan_params", compute)
    layer = MambaLayer(dim=16, state_size=4).eval()
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        layer(x)
        with Watch():
            layer(x)
            layer(x)
    assert len(calls) == 3


def test_performer_keeps_its_scaled_projection_per_layer(monkeypatch):
    """Each PerformerAttention keeps W D^-1/4 for the fused kernels: twelve layers called in turn
    scale twelve times, not once per call; a redraw rescales; while anything traces the call
    it is None (the op scales W in its graph)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from hvlm_export.modules import PerformerAttention
    from hvlm_export.ops import favor

    compute, calls = _counting(lambda w, d, dtype: (w * d**-0.25).to(dtype))
    monkeypatch.setattr(favor, "scale_projection", compute, raising=False)
    layers = [PerformerAttention(dim=32, num_heads=2, nb_features=8) for _ in range(12)]
    for _ in range(10):
        for layer in layers:
            w = layer._scaled_projection(torch.float16)
    assert len(calls) == 12
    torch.testing.assert_close(w.float(), layers[-1].projection_matrix * 16**-0.25, rtol=1e-3, atol=1e-3)
    layers[0].redraw_projection()
    torch.testing.assert_close(layers[0]._scaled_projection(torch.float16).float(),
                               layers[0].projection_matrix * 16**-0.25, rtol=1e-3, atol=1e-3)
    assert len(calls) == 13

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Watch():
        assert layers[0]._scaled_projection(torch.float16) is None


def test_layers_made_under_inference_mode_run_and_keep_nothing():
    """Inference tensors have no version counter: their derived values are computed per call."""
    with torch.inference_mode():
        layer = MambaLayer(dim=16, state_size=4).eval()
        x = torch.randn(2, 8, 16)
        first = layer(x)
        torch.testing.assert_close(layer(x), first)
        copy.deepcopy(layer)(x)
    assert layer._kept_params._state[0] == ()


def test_a_functorch_transform_leaves_the_layer_usable():
    """torch.func transforms wrap tensors without storage: nothing is kept from inside them, and
    plain calls afterwards still work."""
    from torch.func import functional_call, jvp

    layer = MambaLayer(dim=16, state_size=4).eval()
    x = torch.randn(1, 6, 16)
    params = dict(layer.named_parameters())
    tangents = {k: torch.zeros_like(v) for k, v in params.items()}
    jvp(lambda p: functional_call(layer, p, (x,)), (params,), (tangents,))
    with torch.no_grad():
        want = copy.deepcopy(layer)(x)
        torch.testing.assert_close(layer(x), want)


def test_fused_projections_pickled_before_the_cache_still_run():
    import pickle

    from hvlm_export.modules import CrossMemoryAttention

    layer = CrossMemoryAttention(dim=16, num_heads=2).eval()
    layer.fuse_projections()
    fused = layer._fused_qkv
    del fused._stacked  # the older form: the stacked copy in _key / weight / bias
    fused.__dict__.update(_key=None, weight=None, bias=None)
    again = pickle.loads(pickle.dumps(layer))
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(x), layer.unfuse_projections() or layer(x))


def test_fused_projections_keep_gradients_of_every_projection():
    """A frozen q_proj does not make the call 'no autograd' while k / v still train."""
    from hvlm_export.modules import CrossMemoryAttention

    layer = CrossMemoryAttention(dim=16, num_heads=2)
    layer.fuse_projections()
    layer.q_proj.requires_grad_(False)
    layer(torch.randn(1, 5, 16)).sum().backward()
    assert layer.k_proj.weight.grad is not None and layer.v_proj.weight.grad is not None
