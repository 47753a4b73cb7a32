"""CUDA paths on a GPU: the Triton scan against the float64 recurrence, modules against CPU.

Run on a GPU machine: ``pytest -m gpu tests/gpu``. Skipped (with the reason) without CUDA.
"""

from __future__ import annotations

import pytest
import torch

from hvlm_export.registry import REGISTRY
from tests.references import scan_reference_f64

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

# fp32 kernel vs float64 recurrence: ||y - ref|| / ||ref|| lands near 1e-7 (fp32 rounding
# accumulated over L steps); 1e-5 leaves headroom while a wrong carry gives > 1e-2.
FP32_REL = 1e-5
# fp16/bf16 inputs are rounded before the fp32 recurrence; compare against the recurrence on
# the rounded inputs, output rounding dominates (fp16 eps 1e-3, bf16 8e-3).
LOW_REL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

SHAPES = [  # (B, D, N, L): L from 1 to 65536, D and N not powers of two included; the unmasked form (L a
    # multiple of the 256-step chunk, D of the 4 warps, N a power of two): one chunk, several, 64K
    (1, 24, 16, 1), (2, 24, 16, 7), (2, 33, 5, 64), (1, 40, 16, 1000), (1, 37, 13, 8192), (1, 16, 16, 65536),
    (3, 130, 7, 517), (1, 48, 16, 256), (2, 64, 8, 2048), (2, 12, 16, 1024),
]


def _inputs(b, d, n, length, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    data = dict(u=r(b, d, length), delta=r(b, d, length) - 1.0, A=-torch.rand(d, n, generator=g) * 4 - 0.05,
                B=r(b, n, length), C=r(b, n, length), D=r(d), z=r(b, d, length), delta_bias=r(d) * 0.5)
    cuda = {k: v.cuda() for k, v in data.items()}
    for k in ("u", "delta", "B", "C", "z"):
        cuda[k] = cuda[k].to(dtype)
    return cuda


def _rel(got, want):
    return ((got.double().cpu() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%dD%dN%dL%d" % s)
def test_triton_scan_fp32(shape):
    from hvlm_export.ops.selective_scan_triton import selective_scan_triton

    inp = _inputs(*shape, seed=sum(shape))
    want, want_state = scan_reference_f64(**{k: v.cpu() for k, v in inp.items()}, delta_softplus=True)
    y, state = selective_scan_triton(**inp, delta_softplus=True)
    assert torch.isfinite(y).all()
    assert _rel(y, want) < FP32_REL, f"rel err {_rel(y, want):.3g}"
    assert _rel(state, want_state) < FP32_REL, f"state rel err {_rel(state, want_state):.3g}"


@pytest.mark.parametrize("warps, items, buffers, maxnreg", [
    (4, 8, 2, 168), (4, 8, 1, 168), (1, 1, 1, None), (2, 4, 2, 128), (8, 16, 1, None), (4, 2, 2, None)])
@pytest.mark.parametrize("nstate", [16, 5, 1])
@pytest.mark.parametrize("dim, length", [(45, 3001), (48, 2048)], ids=["masked", "even"])
def test_triton_configs_agree(warps, items, buffers, maxnreg, nstate, dim, length):
    """Every configuration against the float64 loop: chunks of 32 to 512 steps, L not a
    multiple of any and D not a multiple of the warps (the masked form), or both multiples
    (the unmasked form where N is a power of two), fewer states than the block."""
    from hvlm_export.ops.selective_scan_triton import ScanConfig, selective_scan_triton

    inp = _inputs(2, dim, nstate, length, seed=warps + items + nstate)
    want, want_state = scan_reference_f64(**{k: v.cpu() for k, v in inp.items()}, delta_softplus=True)
    y, state = selective_scan_triton(**inp, delta_softplus=True, config=ScanConfig(warps, items, buffers, maxnreg))
    assert _rel(y, want) < FP32_REL and _rel(state, want_state) < FP32_REL


@pytest.mark.parametrize("nstate", [32, 64])
def test_triton_wide_states(nstate):
    """Past 16 states the states run in a loop (not unrolled) and the tiles shrink to fit."""
    from hvlm_export.ops.selective_scan_triton import selective_scan_triton

    inp = _inputs(1, 20, nstate, 700, seed=nstate)
    want, want_state = scan_reference_f64(**{k: v.cpu() for k, v in inp.items()}, delta_softplus=True)
    y, state = selective_scan_triton(**inp, delta_softplus=True)
    assert _rel(y, want) < FP32_REL and _rel(state, want_state) < FP32_REL


@pytest.mark.parametrize("length", [1, 255, 256, 257, 512, 1000])
def test_triton_initial_state(length):
    """Continuing from a state (streaming), across chunk boundaries."""
    from hvlm_export.ops.selective_scan_triton import selective_scan_triton

    inp = _inputs(2, 40, 16, length, seed=length)
    h0 = torch.randn(2, 40, 16, device="cuda")
    want, want_state = scan_reference_f64(**{k: v.cpu() for k, v in inp.items()}, delta_softplus=True,
                                          initial_state=h0.cpu())
    y, state = selective_scan_triton(**inp, delta_softplus=True, initial_state=h0)
    assert _rel(y, want) < FP32_REL and _rel(state, want_state) < FP32_REL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_triton_scan_reads_channel_contiguous_views(dtype):
    """(B, L, rows) memory passed as (B, rows, L) views: copied to unit L-stride, same numbers."""
    from hvlm_export.ops.selective_scan_triton import selective_scan_triton

    inp = _inputs(2, 70, 16, 1000, seed=5, dtype=dtype)
    views = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if v.dim() == 3 else v) for k, v in inp.items()}
    assert views["u"].stride(1) == 1
    want, want_state = selective_scan_triton(**inp, delta_softplus=True)
    got, got_state = selective_scan_triton(**views, delta_softplus=True)
    assert got.stride(1) == 1  # y takes u's layout (the op's fake says so too)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(got_state, want_state, rtol=1e-5, atol=1e-6)


def test_compiled_conv_knows_the_rows_are_aligned():
    """torch.compile (dynamic shapes) of the conv on MambaLayer's steps-contiguous layout passes
    ALIGN16 where L is a multiple of 16 (the strides are symbols there; without the flag the
    kernel's loads are not vectorised: 0.05 against 0.03 ms at 8K), and the flag is a guard: the
    same compiled function called at L = 4100 recompiles without it. Both against F.conv1d."""
    import torch.nn.functional as F
    from torch._inductor.utils import run_and_get_code

    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(96, 1, 4, generator=g).cuda().half(), torch.randn(96, generator=g).cuda().half()
    torch._dynamo.reset()
    fn = torch.compile(lambda t: torch.ops.hvlm.causal_conv1d_silu(t, w, b), dynamic=True, fullgraph=True)
    for length in (4096, 4100):
        xz = torch.randn(1, 2 * 96, length, generator=g).cuda().half()  # (B, 2 D, L), as in_proj writes it
        x = xz[:, :96].transpose(1, 2)
        got, codes = run_and_get_code(fn, x)
        launch = [line for line in "\n".join(codes).splitlines() if "'ALIGN16'" in line]
        assert launch and all(f"'ALIGN16': {length % 16 == 0}" in line for line in launch), (length, launch)
        want = F.silu(F.conv1d(xz[:, :96].float(), w.float(), b.float(), padding=3, groups=96)[..., :length])
        torch.testing.assert_close(got.float(), want.transpose(1, 2), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("length", [1, 3, 100, 4097])
def test_causal_conv1d_silu_matches_conv1d(dtype, length):
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(length)
    xz = torch.randn(2, length, 2 * 200, generator=g).cuda().to(dtype)
    x = xz[..., :200]  # a strided view, as MambaLayer passes it
    w, b = torch.randn(200, 1, 4, generator=g).cuda().to(dtype), torch.randn(200, generator=g).cuda().to(dtype)
    want = F.silu(F.conv1d(x.float().transpose(1, 2), w.float(), b.float(), padding=3, groups=200)[..., :length])
    got = torch.ops.hvlm.causal_conv1d_silu(x, w, b)
    assert got.shape == x.shape and got.is_contiguous() and got.dtype == dtype
    torch.testing.assert_close(got.float(), want.transpose(1, 2), rtol=1e-2 if dtype == torch.float16 else 1e-5,
                               atol=1e-2 if dtype == torch.float16 else 1e-5)
    nobias = torch.ops.hvlm.causal_conv1d_silu(x, w, None)
    want = F.silu(F.conv1d(x.float().transpose(1, 2), w.float(), None, padding=3, groups=200)[..., :length])
    torch.testing.assert_close(nobias.float(), want.transpose(1, 2), rtol=1e-2 if dtype == torch.float16 else 1e-5,
                               atol=1e-2 if dtype == torch.float16 else 1e-5)


@pytest.mark.parametrize("length", [777, 800])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_mamba_fused_path_matches_training_path(dtype, length):
    """Inference on CUDA takes the fused conv and in-place scan (L padded to a multiple of 16
    at 777); with autograd on it takes the nn.Conv1d path: same numbers, and torch.compile
    keeps both ops whole."""
    from hvlm_export.modules import MambaLayer, cast_module

    torch.manual_seed(0)
    layer = cast_module(MambaLayer(dim=96), dtype).cuda()
    x = torch.randn(2, length, 96, device="cuda", dtype=dtype)
    with torch.no_grad():
        assert layer._fused(x)
        fused = layer(x)
        compiled = torch.compile(layer, fullgraph=True)(x)
    assert fused.shape == x.shape and fused.is_contiguous()
    reference = layer(x.requires_grad_(True))  # autograd on: the unfused path
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.float16 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused, reference.detach(), **tol)
    torch.testing.assert_close(compiled, fused, **tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_scan_low_precision(dtype):
    inp = _inputs(2, 64, 16, 2048, seed=3, dtype=dtype)
    want, _ = scan_reference_f64(**{k: v.cpu().float() for k, v in inp.items()}, delta_softplus=True)
    y = torch.ops.hvlm.selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"],
                                      inp["delta_bias"], True)[0]
    assert y.dtype == dtype
    assert _rel(y, want) < LOW_REL[dtype], f"rel err {_rel(y, want):.3g}"


def test_op_dispatches_to_triton_and_backprops():
    from hvlm_export.ops import selective_scan, selective_scan_ref

    inp = _inputs(1, 16, 8, 300, seed=9)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
    selective_scan(**leaves, delta_softplus=True).square().sum().backward()
    got = {k: v.grad.clone() for k, v in leaves.items()}
    for v in leaves.values():
        v.grad = None
    selective_scan_ref(**leaves, delta_softplus=True)[0].square().sum().backward()
    for k, v in leaves.items():
        assert torch.allclose(got[k], v.grad, rtol=1e-3, atol=1e-3), k


def test_plugin_kernel_single_pass_and_aot_compiles():
    """The kernel the TensorRT AOT plugin embeds: run it, and compile it to PTX as TRT would.
    Shapes and addresses cover each part of its split of L: whole chunks and a tail (800 = 3
    chunks + 32), no whole chunk (96: the initial state copied, then the masked form), only
    whole chunks (512), and the masked form throughout: L not a multiple of 16 (777, 1), N not
    a power of two, D not a multiple of W, and each data pointer in turn one element past a
    16-byte boundary (a vector load there would fault). L = 0: the initial state, unchanged."""
    import triton

    from hvlm_export.ops.scan_aot import compile_ahead, compile_plugin_ptx, scan_plugin_kernel
    from hvlm_export.ops.scan_config import plugin_config

    def misaligned(t):  # the same values one element past a 16-byte boundary (a view into a larger buffer)
        return torch.empty(t.numel() + 1, device="cuda", dtype=t.dtype)[1:].view_as(t).copy_(t)

    cases = [(16, torch.float32, 48, 800, None), (1, torch.float32, 48, 800, None), (3, torch.float32, 48, 800, None),
             (16, torch.float16, 48, 800, None), (5, torch.bfloat16, 48, 777, None), (16, torch.float32, 48, 777, None),
             (16, torch.float32, 48, 96, None), (16, torch.bfloat16, 48, 512, None), (16, torch.float32, 50, 608, None),
             (16, torch.float16, 48, 1, None)]
    cases += [(16, torch.float32, 48, 800, name) for name in ("u", "delta", "B", "C", "y")]
    cases += [(16, torch.float16, 48, 800, "y")]
    aot_builds = {}
    for nstate, dtype, dim, length, shift in cases:
        inp = _inputs(2, dim, nstate, length, seed=4 + nstate + length, dtype=dtype)
        if shift in inp:
            inp[shift] = misaligned(inp[shift])
        y = torch.full_like(inp["u"], float("nan"))
        y = misaligned(y) if shift == "y" else y
        state = torch.full((2, dim, nstate), float("nan"), device="cuda")
        h0 = torch.randn(2, dim, nstate, device="cuda")
        want, want_state = scan_reference_f64(**{k: v.cpu().float() for k, v in inp.items() if k != "z"},
                                              delta_softplus=True, initial_state=h0.cpu())
        block_n = triton.next_power_of_2(nstate)
        cfg = plugin_config(block_n)
        scan_plugin_kernel[(triton.cdiv(dim, cfg.warps), 2)](
            inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["delta_bias"], h0, dim, length,
            nstate, y, state, SOFTPLUS=True, BLOCK_N=block_n, ITEMS=cfg.items, NBUF=cfg.buffers,
            num_warps=cfg.warps, **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}))
        tol = FP32_REL if dtype == torch.float32 else 1e-2
        case = (nstate, dtype, dim, length, shift)
        assert _rel(y, want) < tol and _rel(state, want_state) < tol, case
        if dtype != torch.bfloat16 and nstate == 16 and dim == 48:  # the AOT build itself: no specialisation
            aot = aot_builds.get(dtype) or compile_ahead(scan_plugin_kernel, str(dtype).removeprefix("torch."), {
                "SOFTPLUS": True, "BLOCK_N": 16, "ITEMS": cfg.items, "NBUF": cfg.buffers}, cfg)
            aot_builds[dtype] = aot
            y.fill_(float("nan"))
            aot[(triton.cdiv(dim, cfg.warps), 2, 1)](inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"],
                                                     inp["delta_bias"], h0, dim, length, nstate, y, state)
            assert _rel(y, want) < tol and _rel(state, want_state) < tol, ("aot", *case)
    cfg = plugin_config(16)
    inp, h0 = _inputs(2, 48, 16, 0, seed=0), torch.randn(2, 48, 16, device="cuda")
    y, state = torch.empty_like(inp["u"]), torch.full((2, 48, 16), float("nan"), device="cuda")
    scan_plugin_kernel[(12, 2)](inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["delta_bias"], h0,
                                48, 0, 16, y, state, SOFTPLUS=True, BLOCK_N=16, ITEMS=cfg.items, NBUF=cfg.buffers,
                                num_warps=cfg.warps, maxnreg=cfg.maxnreg)
    assert torch.equal(state, h0)
    for dtype in ("float32", "float16", "bfloat16"):
        name, ptx, shared, warps = compile_plugin_ptx(dtype, 16, True)
        assert ".entry" in ptx and name in ptx and warps == plugin_config(16).warps and ".maxnreg" in ptx


# fp32 on CUDA: SDPA's fused kernels and cuBLAS may use TF32-like tensor-core arithmetic for
# attention products (measured ~3e-4 relative on this H200 image); fp16: half-precision rounding.
REGISTRY_CUDA_TOL = {torch.float32: 1e-3, torch.float16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(REGISTRY))
def test_modules_on_cuda_match_cpu(name, dtype):
    from hvlm_export.modules import cast_module

    spec = REGISTRY[name]
    overrides = {"dim": 128, **({"num_heads": 4} if "num_heads" in spec.defaults else {})}
    torch.manual_seed(0)
    cpu = spec.build(overrides).eval()
    gpu = spec.build(overrides).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = cast_module(gpu.cuda(), dtype)
    for length in (1, 37, 300):
        inputs = spec.example_inputs(cpu, 2, length, seed=length)
        with torch.no_grad():
            want = cpu(*inputs)
            got = gpu(*(t.cuda().to(dtype) for t in inputs)).float().cpu()
        err = ((got - want).norm() / want.norm()).item()
        assert err < REGISTRY_CUDA_TOL[dtype], f"{name} L={length}: rel err {err:.3g}"


STREAMING = {"mamba": {}, "performer": {"causal": True}, "strided": {"causal": True},
             "local_global": {"causal": True}, "linear_block": {}, "hierarchical_block": {"causal": True}}


@torch.no_grad()
@pytest.mark.parametrize("name", list(STREAMING))
def test_streaming_on_cuda_equals_forward(name):
    """Any chunking through step() equals forward() on CUDA too (fp32, rel <= 1e-5 on top of
    the same arithmetic: both run the CUDA kernels)."""
    spec = REGISTRY[name]
    torch.manual_seed(0)
    layer = spec.build({**spec.small, **STREAMING[name]}).cuda().eval()
    x = torch.randn(2, 300, spec.kwargs(small=True)["dim"], device="cuda")
    want = layer(x)
    state, outs, start = layer.init_state(2), [], 0
    for size in (1, 1, 97, 1, 130, 70):
        y, state = layer.step(x[:, start:start + size], state)
        outs.append(y)
        start += size
    err = ((torch.cat(outs, 1) - want).norm() / want.norm()).item()
    assert err < 1e-5, f"{name}: rel err {err:.3g}"
