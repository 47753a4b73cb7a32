"""The CUDA scan's launcher (``selective_scan_triton``) without a GPU: its kernel replaced by a
stand-in that runs the sequential reference on exactly the tensors, grid and flags the
launcher passes. So the launcher's own logic is checked on the CPU: batch rows split over
launches where the grid's y axis is full, the unmasked form chosen only where it may be and
the steps after the whole chunks continued from their state, initial states, layouts copied
to unit L-stride and y back to u's layout. The kernel itself is
checked on the GPU (tests/gpu/test_cuda_paths.py)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="Triton is not installed (it ships with CUDA torch builds)")


class _Kernel:
    """``scan_kernel[grid](*args, **flags)`` running the float64 reference on the arguments."""

    def __init__(self, warps):
        self.warps, self.launches = warps, []

    def __getitem__(self, grid):
        def launch(u, delta, A, B, C, D, bias, z, y, state, init, dim, length, nstate, *strides, **flags):
            from hvlm_export.ops.selective_scan import selective_scan_ref

            assert grid == ((dim + self.warps - 1) // self.warps, u.shape[0])
            assert all(t.shape[2] == length and (length <= 1 or t.stride(2) == 1) for t in (u, delta, B, C, z, y))
            assert strides == (*u.stride(), *delta.stride(), *z.stride(), *y.stride(), *B.stride(), *C.stride())
            self.launches.append({**flags, "rows": u.shape[0], "length": length})
            out, last = selective_scan_ref(
                *(t.double() for t in (u, delta, A, B, C, D)), z=z.double() if flags["HAS_Z"] else None,
                delta_bias=bias.double(), delta_softplus=flags["SOFTPLUS"],
                initial_state=init.double() if flags["HAS_INIT"] else None)
            y.copy_(out)
            state.copy_(last)

        return launch


def _inputs(b, d, n, length, gate=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(b, d, length), delta=r(b, d, length) - 1.0, A=-torch.rand(d, n, generator=g) * 4, B=r(b, n, length),
                C=r(b, n, length), D=r(d), z=r(b, d, length) if gate else None, delta_bias=r(d) * 0.5)


@pytest.mark.parametrize("batch, dim, nstate, length, gate, init, phases", [
    # phases: the launches over L as (steps, unmasked form, from a state), each over every batch group
    (5, 8, 16, 512, True, False, [(512, True, False)]),       # batch over three launches, whole chunks
    (5, 8, 16, 500, True, True, [(256, True, True), (244, False, True)]),  # whole chunks, then the tail
    (2, 8, 16, 1000, False, False, [(768, True, False), (232, False, True)]),  # the tail from their state
    (2, 8, 16, 100, True, False, [(100, False, False)]),      # shorter than a chunk
    (3, 6, 16, 256, False, True, [(256, False, True)]),       # D not a multiple of the warps
    (2, 8, 5, 256, True, False, [(256, False, False)]),       # N not a power of two
    (1, 8, 16, 256, False, False, [(256, True, False)]),
])
def test_launcher_against_the_reference(monkeypatch, batch, dim, nstate, length, gate, init, phases):
    from hvlm_export.ops import selective_scan_triton as sst
    from hvlm_export.ops.selective_scan import selective_scan_ref

    kernel = _Kernel(sst.default_config(nstate).warps)
    monkeypatch.setattr(sst, "scan_kernel", kernel)
    monkeypatch.setattr(sst, "MAX_GRID_Y", 2)
    inp = _inputs(batch, dim, nstate, length, gate)
    h0 = torch.randn(batch, dim, nstate) if init else None
    y, state = sst.selective_scan_triton(**inp, delta_softplus=True, initial_state=h0)
    want, want_state = selective_scan_ref(**inp, delta_softplus=True, initial_state=h0)
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(state, want_state)
    groups = [min(2, batch - b0) for b0 in range(0, batch, 2)]
    assert [(k["rows"], k["length"], k["EVEN"], k["HAS_INIT"], k["HAS_Z"]) for k in kernel.launches] == [
        (rows, steps, even, from_state, gate) for steps, even, from_state in phases for rows in groups]


def test_launcher_copies_strided_layouts_and_returns_y_in_u_layout(monkeypatch):
    """(B, L, rows) memory viewed as (B, rows, L): copied to unit L-stride for the kernel, y
    returned in u's layout (the op's contract)."""
    from hvlm_export.ops import selective_scan_triton as sst
    from hvlm_export.ops.selective_scan import selective_scan_ref

    monkeypatch.setattr(sst, "scan_kernel", _Kernel(sst.default_config(16).warps))
    inp = _inputs(2, 8, 16, 300)
    views = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if k in ("u", "delta", "z", "B", "C") else v)
             for k, v in inp.items()}
    y, state = sst.selective_scan_triton(**views, delta_softplus=True)
    want, want_state = selective_scan_ref(**inp, delta_softplus=True)
    assert y.stride() == views["u"].stride()
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(state, want_state)
