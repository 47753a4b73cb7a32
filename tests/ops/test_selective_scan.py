"""hvlm::selective_scan: the fast chunked path and the op against the float64 recurrence."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvlm_export.ops import selective_scan, selective_scan_chunked, selective_scan_ref
from tests.references import scan_reference_f64

# fp32 kernels vs the float64 recurrence: relative error of a few fp32 ulps per step,
# growing slowly with L; 1e-5 of the output scale is generous and a wrong carry is >1e-2.
REL = 1e-5


def _inputs(b, d, n, length, seed=0, gate=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        u=r(b, d, length), delta=r(b, d, length), A=-torch.rand(d, n, generator=g) * 4 - 0.1,
        B=r(b, n, length), C=r(b, n, length), D=r(d), z=r(b, d, length) if gate else None, delta_bias=r(d),
    )


def _rel_err(got, want, floor=1e-12):
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(floor)).item()


@pytest.mark.parametrize("length", [1, 2, 31, 32, 33, 64, 100, 257])
@pytest.mark.parametrize("shape", [(1, 3, 2), (2, 5, 16), (3, 7, 5)], ids=lambda s: "B%dD%dN%d" % s)
def test_chunked_matches_recurrence(shape, length):
    b, d, n = shape
    inp = _inputs(b, d, n, length)
    want, want_state = scan_reference_f64(**inp, delta_softplus=True)
    for impl in ("op", "reference"):
        y, state = selective_scan(**inp, delta_softplus=True, return_last_state=True, impl=impl)
        assert y.dtype == torch.float32 and state.dtype == torch.float32
        assert _rel_err(y, want) < REL, f"{impl} L={length}: rel err {_rel_err(y, want):.3g}"
        assert _rel_err(state, want_state) < REL, f"{impl} state rel err {_rel_err(state, want_state):.3g}"


@pytest.mark.parametrize("chunk", [1, 3, 16, 64])
def test_chunk_size_does_not_change_the_result(chunk):
    inp = _inputs(2, 4, 3, 50)
    want, _ = scan_reference_f64(**inp)
    got, _ = selective_scan_chunked(**inp, chunk=chunk)
    assert _rel_err(got, want) < REL


@pytest.mark.parametrize("optional", ["D", "z", "delta_bias"])
def test_optional_inputs(optional):
    inp = _inputs(2, 4, 3, 40)
    inp[optional] = None
    want, _ = scan_reference_f64(**inp, delta_softplus=True)
    got = selective_scan(**inp, delta_softplus=True)
    assert _rel_err(got, want) < REL


def test_low_precision_computes_in_fp32_and_casts_back():
    inp = _inputs(1, 4, 3, 70)
    half = {k: (v.half() if v is not None and k not in ("A", "D", "delta_bias") else v) for k, v in inp.items()}
    y, state = selective_scan(**half, delta_softplus=True, return_last_state=True)
    assert y.dtype == torch.float16 and state.dtype == torch.float32
    ref, _ = selective_scan_ref(**half, delta_softplus=True)
    assert torch.allclose(y.float(), ref.float(), atol=2e-3, rtol=2e-3)


def test_gradients_match_the_reference():
    inp = _inputs(2, 3, 4, 45, gate=True)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
    selective_scan(**leaves, delta_softplus=True).square().sum().backward()
    got = {k: v.grad.clone() for k, v in leaves.items()}
    for v in leaves.values():
        v.grad = None
    selective_scan_ref(**leaves, delta_softplus=True)[0].square().sum().backward()
    for k, v in leaves.items():
        assert torch.allclose(got[k], v.grad, rtol=1e-4, atol=1e-4), f"grad of {k}"


def test_opcheck():
    """torch.library's own consistency checks (fake impl, schema, autograd registration)."""
    inp = _inputs(2, 3, 4, 20)
    args = (inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"], inp["delta_bias"], True)
    torch.library.opcheck(torch.ops.hvlm.selective_scan.default, args)
    h0 = torch.randn(2, 3, 4, requires_grad=True)
    torch.library.opcheck(torch.ops.hvlm.selective_scan.default, (*args, h0))


@pytest.mark.parametrize(
    "bad, match",
    [({"A": torch.zeros(9, 3)}, "A must be"), ({"B": torch.zeros(2, 3, 7)}, "B must have shape"),
     ({"u": torch.zeros(2, 4)}, "u must be")],
)
def test_bad_shapes(bad, match):
    inp = _inputs(2, 4, 3, 10)
    inp.update(bad)
    with pytest.raises(ValueError, match=match):
        selective_scan(**inp)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), d=st.integers(1, 6), n=st.integers(1, 5), length=st.integers(1, 120),
       softplus=st.booleans(), seed=st.integers(0, 2**16))
def test_property_chunked_equals_recurrence(b, d, n, length, softplus, seed):
    inp = _inputs(b, d, n, length, seed=seed)
    if not softplus:  # a time step is positive; a negative one makes the state blow up
        inp["delta"], inp["delta_bias"] = inp["delta"].abs(), inp["delta_bias"].abs()
    want, want_state = scan_reference_f64(**inp, delta_softplus=softplus)
    y, state = selective_scan_chunked(**inp, delta_softplus=softplus)
    # a final state that has decayed far below the O(0.1..1) states it passed through keeps
    # their absolute fp32 error (found by hypothesis: 3.5e-8 on a 5e-4 state), hence the floor
    assert _rel_err(y, want) < REL and _rel_err(state, want_state, floor=1e-2) < REL


@pytest.mark.parametrize("length", [1, 5, 32, 33, 100])
@pytest.mark.parametrize("impl", ["op", "reference"])
def test_initial_state_continues_the_recurrence(impl, length):
    inp = _inputs(2, 5, 4, length, seed=length)
    h0 = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(7))
    want, want_state = scan_reference_f64(**inp, delta_softplus=True, initial_state=h0)
    y, state = selective_scan(**inp, delta_softplus=True, return_last_state=True, impl=impl, initial_state=h0)
    assert _rel_err(y, want) < REL, f"rel err {_rel_err(y, want):.3g}"
    assert _rel_err(state, want_state) < REL, f"state rel err {_rel_err(state, want_state):.3g}"


@pytest.mark.parametrize("split", [1, 31, 32, 60, 99])
def test_scan_in_two_pieces_equals_one(split):
    """scan(x[:a]) then scan(x[a:], initial_state=its last state) == scan(x): streaming."""
    inp = _inputs(2, 6, 3, 100, seed=split)
    whole, whole_state = selective_scan(**inp, delta_softplus=True, return_last_state=True)
    head = {k: (v[..., :split] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inp.items()}
    tail = {k: (v[..., split:] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inp.items()}
    y1, s1 = selective_scan(**head, delta_softplus=True, return_last_state=True)
    y2, s2 = selective_scan(**tail, delta_softplus=True, return_last_state=True, initial_state=s1)
    assert torch.allclose(torch.cat([y1, y2], -1), whole, rtol=1e-5, atol=1e-6)
    assert torch.allclose(s2, whole_state, rtol=1e-5, atol=1e-6)


def test_initial_state_gradient():
    """d(output)/d(initial_state) through the op equals the reference loop's."""
    inp = _inputs(1, 3, 2, 40, seed=3)
    h0 = torch.randn(1, 3, 2, requires_grad=True)
    y, state = selective_scan(**inp, delta_softplus=True, return_last_state=True, initial_state=h0)
    (y.square().sum() + state.sum()).backward()
    got = h0.grad.clone()
    h0.grad = None
    y, state = selective_scan_ref(**inp, delta_softplus=True, initial_state=h0)
    (y.square().sum() + state.sum()).backward()
    assert torch.allclose(got, h0.grad, rtol=1e-4, atol=1e-5), (got - h0.grad).abs().max()


def test_bad_initial_state_shape():
    inp = _inputs(2, 5, 4, 10)
    with pytest.raises(ValueError, match="initial_state must have shape"):
        selective_scan(**inp, initial_state=torch.zeros(2, 5, 3))
