"""The causal conv + SiLU Triton kernel (hvlm_export.ops.causal_conv_triton) in Triton's interpreter
(where Triton is installed), against F.conv1d + SiLU: both layouts of x, each layout's tile and
the other's, lengths and widths around the tiles. On a GPU: tests/gpu/test_cuda_paths.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_INTERPRETED = """
import torch
import torch.nn.functional as F
from hvlm_export.ops import causal_conv_triton as conv

torch.manual_seed(0)
worst = 0.0
for layout, want_tile in (("steps", conv.STEPS_TILE), ("channels", conv.CHANNELS_TILE)):
    for batch, length, dim in ((1, 1, 5), (2, 7, 70), (1, 65, 129), (3, 130, 64), (2, 160, 48)):
        rows = torch.randn(batch, dim, length)
        x = rows.transpose(1, 2) if layout == "steps" else rows.transpose(1, 2).contiguous()
        assert conv.tile(x) == (want_tile if length > 1 else conv.CHANNELS_TILE), (layout, length)
        weight, bias = torch.randn(dim, 1, 4), torch.randn(dim)
        want = F.silu(F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), weight, bias, groups=dim)).transpose(1, 2)
        for config in (None, conv.STEPS_TILE, conv.CHANNELS_TILE):
            got = conv.causal_conv1d_silu_triton(x, weight, bias, config=config)
            assert got.shape == want.shape
            worst = max(worst, (got - want).abs().max().item())
print(worst)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (it ships with CUDA torch builds)")
def test_conv_kernel_in_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_INTERPRETED)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-5, done.stdout


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (it ships with CUDA torch builds)")
def test_align16_gives_vector_loads_where_the_strides_are_symbols():
    """Built for sm_90 with L and the row strides as int32 arguments of unknown divisibility (as
    torch.compile's dynamic shapes pass them; the pointers, D and the batch strides, D L with D
    static, marked divisible by 16, as Inductor marks them), the kernel reads steps-contiguous
    rows with 16-byte vector loads only with ALIGN16 (the launcher sets it where L and the
    strides are multiples of 16)."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hvlm_export.ops.causal_conv_triton import STEPS_TILE, _conv_silu_kernel

    names = [p.name for p in _conv_silu_kernel.params]
    signature = {n: "*fp16" if n.endswith("_ptr") else "i32" for n in names}
    constexprs = {"sx_t": 1, "so_t": 1, "K": 4, "HAS_BIAS": True, "BLOCK_T": STEPS_TILE[0], "BLOCK_D": STEPS_TILE[1]}
    signature.update({n: "constexpr" for n in [*constexprs, "ALIGN16"]})
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ("x_ptr", "w_ptr", "bias_ptr", "out_ptr", "dim",
                                                                         "sx_b", "so_b")}
    vectors = {}
    for align in (False, True):
        source = ASTSource(fn=_conv_silu_kernel, signature=signature, constexprs={**constexprs, "ALIGN16": align},
                           attrs=attrs)
        ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": STEPS_TILE[2]}).asm["ptx"]
        vectors[align] = len(re.findall(r"ld\.global(\.\w+)*\.v[24]\.b32", ptx))
    assert vectors[False] == 0 and vectors[True] > 0, vectors
