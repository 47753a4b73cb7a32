"""The CPU kernels of hvlm::selective_scan (hvlm_export.ops.selective_scan_cpu) against the
float64 recurrence: the fused numba kernel (where numba is installed) and the blocked torch
fallback (always), through the op and directly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from hvlm_export.ops import selective_scan, selective_scan_ref
from hvlm_export.ops import selective_scan_cpu as cpu
from tests.references import scan_reference_f64

# both kernels vs the float64 recurrence: the tolerance of tests/ops/test_selective_scan.py
REL = 1e-5


@pytest.fixture(params=["numba", "torch"])
def kernel(request, monkeypatch):
    """Which CPU kernel the op runs: the fused one (skipped without numba) or the torch fallback."""
    if request.param == "numba":
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(cpu, "scan_kernel", lambda: None)
    return request.param


def _inputs(b, d, n, length, seed=0, gate=True, stiff=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    delta = r(b, d, length) * (8 if stiff else 1)  # stiff: decays down to exp(-200), underflow
    return dict(
        u=r(b, d, length), delta=delta, A=-torch.rand(d, n, generator=g) * 4 - 0.1,
        B=r(b, n, length), C=r(b, n, length), D=r(d), z=r(b, d, length) if gate else None, delta_bias=r(d),
    )


def _rel_err(got, want, floor=1e-12):
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(floor)).item()


@pytest.mark.parametrize("length", [1, 2, 63, 64, 65, 200])
@pytest.mark.parametrize("shape", [(1, 3, 2), (2, 70, 16), (3, 5, 7)], ids=lambda s: "B%dD%dN%d" % s)
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
def test_op_matches_recurrence(kernel, shape, length, with_state):
    b, d, n = shape
    inp = _inputs(b, d, n, length, seed=length)
    h0 = torch.randn(b, d, n, generator=torch.Generator().manual_seed(1)) if with_state else None
    want, want_state = scan_reference_f64(**inp, delta_softplus=True, initial_state=h0)
    y, state = selective_scan(**inp, delta_softplus=True, return_last_state=True, initial_state=h0)
    assert y.dtype == torch.float32 and state.dtype == torch.float32 and y.shape == (b, d, length)
    assert _rel_err(y, want) < REL, f"{kernel}: y rel err {_rel_err(y, want):.3g}"
    assert _rel_err(state, want_state) < REL, f"{kernel}: state rel err {_rel_err(state, want_state):.3g}"


@pytest.mark.parametrize("case", ["stiff", "no-softplus", "no-optionals"])
def test_op_edge_inputs(kernel, case):
    inp = _inputs(2, 6, 4, 90, seed=5, stiff=case == "stiff")
    softplus = case != "no-softplus"
    if not softplus:  # a positive time step, as the contract needs
        inp["delta"], inp["delta_bias"] = inp["delta"].abs(), inp["delta_bias"].abs()
    if case == "no-optionals":
        inp.update(D=None, z=None, delta_bias=None)
    want, want_state = scan_reference_f64(**inp, delta_softplus=softplus)
    y, state = selective_scan(**inp, delta_softplus=softplus, return_last_state=True)
    assert _rel_err(y, want) < REL and _rel_err(state, want_state, floor=1e-2) < REL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(kernel, dtype):
    inp = _inputs(2, 5, 3, 70)
    low = {k: (v.to(dtype) if v is not None and k not in ("A", "D", "delta_bias") else v) for k, v in inp.items()}
    y, state = selective_scan(**low, delta_softplus=True, return_last_state=True)
    ref, ref_state = selective_scan_ref(**low, delta_softplus=True)
    assert y.dtype == dtype and state.dtype == torch.float32
    tol = 2e-3 if dtype == torch.float16 else 1e-2  # one rounding of the output to the dtype
    assert torch.allclose(y.float(), ref.float(), atol=tol, rtol=tol)
    assert torch.allclose(state, ref_state, atol=1e-5, rtol=1e-5)


def test_channels_last_views(kernel):
    """(B, D, L) views of (B, L, D) memory, as MambaLayer passes delta, z, B and C."""
    inp = _inputs(2, 9, 4, 50, seed=2)
    views = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if k in ("delta", "z", "B", "C", "u") else v)
             for k, v in inp.items()}
    views["z"] = torch.cat([views["z"], views["z"]], 1)[:, :9]  # gaps between rows, like xz.chunk(2)
    want, want_state = scan_reference_f64(**inp, delta_softplus=True)
    y, state = selective_scan(**views, delta_softplus=True, return_last_state=True)
    assert _rel_err(y, want) < REL and _rel_err(state, want_state) < REL


def test_empty_sequence_keeps_the_state(kernel):
    inp = _inputs(1, 3, 2, 0)
    h0 = torch.randn(1, 3, 2)
    y, state = selective_scan(**inp, return_last_state=True, initial_state=h0)
    assert y.shape == (1, 3, 0) and torch.equal(state, h0)


@pytest.mark.parametrize("chunk, block", [(1, 1), (3, 2), (64, 4), (7, 64)])
def test_blocked_block_and_chunk_sizes(chunk, block):
    """Several channel blocks (with a remainder) and chunks (with padding) of the torch path."""
    inp = _inputs(2, 9, 3, 47, seed=chunk)
    h0 = torch.randn(2, 9, 3)
    want, want_state = scan_reference_f64(**{**inp, "D": None, "z": None}, delta_softplus=True, initial_state=h0)
    dt = torch.nn.functional.softplus(inp["delta"] + inp["delta_bias"][:, None])
    y, state = cpu.selective_scan_blocked(inp["u"], dt, inp["A"], inp["B"], inp["C"], h0, chunk=chunk, block=block)
    assert _rel_err(y, want) < REL and _rel_err(state, want_state) < REL


def test_without_numba_the_op_falls_back(monkeypatch):
    """numba not importable: no kernel, and the op still gives the reference's numbers."""
    monkeypatch.setitem(sys.modules, "numba", None)
    cpu.scan_kernel.cache_clear()
    try:
        assert not cpu.numba_available() and cpu.scan_kernel() is None
        inp = _inputs(2, 4, 3, 40)
        assert cpu.selective_scan_fused(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], None, None, None) is None
        want, _ = scan_reference_f64(**inp, delta_softplus=True)
        assert _rel_err(selective_scan(**inp, delta_softplus=True), want) < REL
    finally:
        cpu.scan_kernel.cache_clear()


def test_importing_the_package_does_not_import_numba():
    code = "import sys, hvlm_export, hvlm_export.ops, hvlm_export.modules; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "bad, error, match",
    [({"A": torch.zeros(9, 3)}, ValueError, "A must be"), ({"C": torch.zeros(2, 3, 7)}, ValueError, "C must have"),
     ({"z": torch.zeros(2, 4, 3)}, ValueError, "z must have"), ({"u": torch.zeros(2, 4, 10, dtype=torch.long)},
                                                                 TypeError, "u must be a floating")],
)
def test_op_rejects_bad_inputs(kernel, bad, error, match):
    """Called directly (no check in selective_scan() before it), the CPU kernel still checks."""
    inp = {**_inputs(2, 4, 3, 10), **bad}
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    with pytest.raises(error, match=match):
        torch.ops.hvlm.selective_scan(*args, True)
