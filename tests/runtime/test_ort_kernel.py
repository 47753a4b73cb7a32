"""The optional ONNX Runtime kernel for SelectiveScan gives the same numbers as the body."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hvlm_export import runtime
from hvlm_export.kernels.scan_numba import numba_available
from hvlm_export.runtime.ort_scan_kernel import selective_scan_fast, selective_scan_numpy
from tests.references import scan_reference_f64


@pytest.mark.parametrize("kernel", [selective_scan_numpy, selective_scan_fast], ids=["numpy", "numba"])
def test_kernels_match_recurrence(kernel):
    if kernel is selective_scan_fast and not numba_available():
        pytest.skip("numba (extra 'cpu') is not installed")
    g = torch.Generator().manual_seed(0)
    u, delta, B, C = (torch.randn(2, *s, generator=g) for s in ((6, 40), (6, 40), (3, 40), (3, 40)))
    A, D, bias = -torch.rand(6, 3, generator=g) * 3, torch.randn(6, generator=g), torch.randn(6, generator=g)
    h0 = torch.randn(2, 6, 3, generator=g)
    want, want_state = scan_reference_f64(u, delta, A, B, C, D, None, bias, True, initial_state=h0)
    y, state = kernel(*(t.numpy() for t in (u, delta, A, B, C, D, bias, h0)), True)
    assert y.dtype == np.float32 and state.dtype == np.float32
    assert np.allclose(y, want.numpy(), rtol=1e-5, atol=1e-5) and np.allclose(state, want_state.numpy(), atol=1e-5)


def test_the_numba_path_imports_no_torch():
    """The ONNX Runtime kernel and its numba scan run in a process without torch."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from hvlm_export.runtime.ort_scan_kernel import selective_scan_fast as f; "
            "r = np.random.default_rng(0).standard_normal; "
            "y, h = f(r((1, 4, 9)), r((1, 4, 9)), -np.ones((4, 2)), r((1, 2, 9)), r((1, 2, 9)), r(4), r(4), "
            "np.zeros((1, 4, 2)), True); assert y.shape == (1, 4, 9) and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_kernel_and_body_agree(exported):
    pytest.importorskip("onnxruntime_extensions", reason="optional extra hvlm-export[ort-extensions] not installed")
    path = exported("mamba")
    feed = {"x": np.random.default_rng(0).standard_normal((2, 77, 64)).astype(np.float32)}
    from hvlm_export.runtime import ort_scan_kernel as ort_kernels

    body = runtime.load(path).run(feed)["y"]
    before = ort_kernels.kernel_calls[0]
    kernel = runtime.load(path, scan_kernel=True).run(feed)["y"]
    assert ort_kernels.kernel_calls[0] == before + 1, "ONNX Runtime must run the kernel, not the body"
    err = np.abs(body - kernel).max()
    assert err < 1e-5, f"max abs difference body vs kernel: {err:.3g}"
