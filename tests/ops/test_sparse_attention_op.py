"""hvlm::sparse_attention and hvlm::favor_softmax without a GPU: the fake implementations
torch.compile traces with, and the sparse kernel itself in Triton's interpreter (where Triton
is installed) against dense masked attention. On a GPU: tests/gpu/test_attention_paths.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import hvlm_export.ops.favor  # noqa: F401  (registers hvlm::favor_softmax)
import hvlm_export.ops.sparse_attention  # noqa: F401  (registers hvlm::sparse_attention)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("globals_", [0, 3])
def test_sparse_attention_fake_gives_the_layers_layout(globals_):
    with FakeTensorMode():
        q = torch.empty(2, 10, 3, 8, device="cuda", dtype=torch.float16)
        g = torch.empty(globals_, 3, 8, device="cuda", dtype=torch.float16) if globals_ else None
        out = torch.ops.hvlm.sparse_attention(q, q, q, g, g, 4, -1 if not globals_ else 5, True, 0.35)
    assert out.shape == (2, 10, 24) and out.dtype == torch.float16 and out.device.type == "cuda"


def test_favor_softmax_fake_gives_the_layers_layout():
    with FakeTensorMode():
        q = torch.empty(2, 3, 10, 8, device="cuda", dtype=torch.bfloat16)
        out = torch.ops.hvlm.favor_softmax(q, q, q, torch.empty(20, 8, device="cuda"), 1e-4, True, None)
    assert out.shape == (2, 10, 24) and out.dtype == torch.bfloat16



_INTERPRETED = """
import torch
from hvlm_export.ops.sparse_attention_triton import CONFIGS, SparseConfig, sparse_attention_triton
from tests.references import local_global_mask, strided_mask

def dense(q, k, v, gk, gv, mask, scale):
    qh, kh, vh = (t.double().transpose(1, 2) for t in (q, k, v))
    if gk is not None:
        kh = torch.cat([gk.double().transpose(0, 1)[None].expand(q.shape[0], -1, -1, -1), kh], 2)
        vh = torch.cat([gv.double().transpose(0, 1)[None].expand(q.shape[0], -1, -1, -1), vh], 2)
    p = (qh @ kh.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf")).softmax(-1)
    return (p @ vh).transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)

torch.manual_seed(0)
errors = []
# (batch, length, heads, head width, stride, radius, causal, global tokens)
for b, n, h, d, s, r, causal, g in [(2, 37, 2, 16, 4, -1, False, 0), (1, 300, 2, 24, 2, -1, True, 0),
                                     (2, 3, 1, 16, 4, -1, False, 0), (2, 70, 2, 24, 1, 5, False, 3),
                                     (1, 130, 1, 16, 1, 40, True, 0), (1, 100, 2, 16, 1, 0, False, 17),
                                     (2, 5, 2, 16, 2**31 - 1, -1, False, 0), (1, 40, 1, 16, 1, 2**31 - 1, True, 1),
                                     (1, 600, 1, 64, 3, -1, True, 0), (1, 300, 1, 64, 1, 70, False, 2)]:
    q, k, v = torch.randn(b, n, 3, h, d).half().unbind(2)
    gk, gv = (torch.randn(g, h, d).half() for _ in range(2)) if g else (None, None)
    mask = strided_mask(n, s, causal) if r < 0 else local_global_mask(n, 2 * min(r, n), g, causal)
    for config in (SparseConfig(32, 16, 4, 1), SparseConfig(16, 32, 4, 1), CONFIGS[r >= 0, causal]):
        got = sparse_attention_triton(q, k, v, gk, gv, s, r, causal, d ** -0.5, config)
        want = dense(q, k, v, gk, gv, mask, d ** -0.5)
        errors.append(((got.double() - want).norm() / want.norm()).item())
print(max(errors) if all(e == e for e in errors) else float("nan"))  # NaN (e != e) fails the test
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (it ships with CUDA torch builds)")
def test_sparse_kernel_in_the_triton_interpreter():
    """Strided (causal or not, ragged groups, L < stride, a stride of 2**31 - 1) and windowed
    (global tokens, radius 0 and 2**31 - 1, padded head widths) against dense masked attention
    in float64, in two small tilings and the production one (CONFIGS); a NaN fails."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_INTERPRETED)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-3, done.stdout



_FAVOR_INTERPRETED = """
import torch
from hvlm_export.modules import PerformerAttention
from hvlm_export.modules.performer import _SOFTMAX_EPS
from hvlm_export.modules._attention import zero_padding
from hvlm_export.ops import favor_triton

torch.manual_seed(0)
errors = []
# (batch, length, dim, heads, features, causal, programs of the causal pass, padded keys)
for b, n, e, h, m, causal, programs, pad in [(2, 70, 48, 2, 40, False, 256, 0), (1, 300, 32, 1, 70, False, 256, 0),
                                             (2, 150, 48, 2, 40, False, 256, 33), (2, 1, 32, 2, 20, False, 256, 0),
                                             (1, 200, 48, 2, 40, True, 1, 0), (2, 300, 32, 2, 70, True, 16, 0),
                                             (1, 1, 32, 1, 20, True, 256, 0), (1, 130, 64, 1, 33, True, 256, 0),
                                             (1, 2200, 32, 1, 20, True, 256, 0), (1, 4200, 32, 1, 20, True, 256, 0)]:
    favor_triton.CAUSAL_PROGRAMS = programs
    layer = PerformerAttention(e, h, nb_features=m, causal=causal).double().eval()
    x = torch.randn(b, n, e, dtype=torch.float64) * 2
    mask = None
    if pad:
        mask = torch.ones(b, n, dtype=torch.bool)
        mask[0, n - pad:] = False
    with torch.no_grad():
        want = layer(x, mask)  # the torch path in float64
        q, k, v = (t.half() for t in layer._qkv(x))
        out = favor_triton._favor_softmax(q, k, v, layer.projection_matrix.float(), _SOFTMAX_EPS, causal, mask)
        got = zero_padding(layer.out_proj(out.double()), mask)
    errors.append(((got - want).norm() / want.norm()).item())
print(errors)
print(max(errors) if all(e == e for e in errors) else float("nan"))  # NaN (e != e) fails the test
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (it ships with CUDA torch builds)")
def test_favor_kernels_in_the_triton_interpreter():
    """The FAVOR+ kernels, non-causal (with and without padded keys) and causal (one segment,
    several, a single token, 35 and 66 segments: carries over groups of 4 and 5), padded head
    widths and feature counts, against the layer's torch path in float64: within fp16
    rounding of q, k and v; a NaN fails."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_FAVOR_INTERPRETED)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 5e-3, done.stdout
