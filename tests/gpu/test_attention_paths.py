"""CUDA-only attention paths against their torch twins: the fused Triton FAVOR+ kernel and
FlexAttention local/global (compiled), plus torch.compile of every registered mechanism.

Run on a GPU machine: ``pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import pytest
import torch

from hvlm_export.modules import LocalGlobalAttention, PerformerAttention, StridedAttention
from hvlm_export.registry import REGISTRY
from tests.references import dense_attention, local_global_mask, strided_mask

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

# fp16 paths that compute the same function in a different order: the outputs differ by
# half-precision rounding of features and sums (~5e-4 measured); a wrong tile or mask is O(1).
HALF_REL = 3e-3


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


@torch.no_grad()
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("length", [1, 63, 64, 65, 1000, 4097, 17000])
@pytest.mark.parametrize("dim, heads, features", [(768, 12, None), (96, 3, 70)])
def test_fused_favor_matches_torch_path(length, dim, heads, features, causal):
    """The fused kernels against the same layer in float64 (the torch path): within fp16
    rounding, and never less accurate than the torch path in fp16."""
    torch.manual_seed(length)
    layer = PerformerAttention(dim, heads, nb_features=features, causal=causal).cuda().eval()
    x = torch.randn(2, length, dim, device="cuda")
    want = layer.double()(x.double())
    layer.half()
    layer.impl = "torch"
    torch_path = layer(x.half())
    layer.impl = "triton"
    got = layer(x.half())
    assert torch.isfinite(got).all()
    errors = f"rel err fused {_rel(got, want):.3g}, torch path {_rel(torch_path, want):.3g}"
    assert _rel(got, want) < HALF_REL, errors
    assert _rel(got, want) <= 1.5 * _rel(torch_path, want) + 2e-4, "the fused path is less accurate: " + errors


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("programs", [1, 7, 512])
def test_fused_causal_favor_is_exact_and_causal(programs, dtype, monkeypatch):
    """The fused causal kernel at several segment splits: against the float64 torch path, and
    future tokens 30x larger leave every earlier output bit-identical."""
    from hvlm_export.ops import favor_triton

    monkeypatch.setattr(favor_triton, "CAUSAL_PROGRAMS", programs)
    torch.manual_seed(programs)
    layer = PerformerAttention(128, 2, nb_features=100, causal=True).cuda().eval()
    x = torch.randn(3, 1500, 128, device="cuda")
    want = layer.double()(x.double())
    layer = layer.to(dtype)
    got = layer(x.to(dtype))
    assert _rel(got, want) < (HALF_REL if dtype == torch.float16 else 4 * HALF_REL), f"rel err {_rel(got, want):.3g}"
    louder = x.clone()
    louder[:, 700:] *= 30
    again = layer(louder.to(dtype))
    assert torch.isfinite(again).all()
    assert torch.equal(again[:, :700], got[:, :700]), "a later token changed an earlier output"


@torch.no_grad()
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("length", [1, 127, 129, 2000])
def test_flex_local_global_matches_blocked(length, causal):
    torch.manual_seed(length)
    layer = LocalGlobalAttention(128, 4, local_window=64, num_global_tokens=3, causal=causal).cuda().eval()
    x = torch.randn(2, length, 128, device="cuda")
    want = layer(x)
    layer.impl = "flex"
    got = layer(x)
    assert _rel(got, want) < 1e-5, f"rel err {_rel(got, want):.3g}"


@torch.no_grad()
@pytest.mark.parametrize("name", list(REGISTRY))
def test_compiled_matches_eager(name):
    """torch.compile(module) computes what the eager module computes, at two lengths."""
    spec = REGISTRY[name]
    torch.manual_seed(0)
    model = spec.build(spec.small).cuda().eval()
    compiled = torch.compile(model)
    for length in (37, 300):
        inputs = tuple(t.cuda() for t in spec.example_inputs(model, 2, length, seed=length))
        want, got = model(*inputs), compiled(*inputs)
        assert _rel(got, want) < 1e-4, f"{name} L={length}: rel err {_rel(got, want):.3g}"


@torch.no_grad()
@pytest.mark.parametrize("name", ["performer", "performer_causal", "mamba", "local_global_flex_causal",
                                  "local_global_flex", "strided", "strided_causal", "strided_causal_triton", "local_global",
                                  "local_global_causal"])
def test_fused_cuda_paths_honour_padding_masks(name):
    """The fused CUDA paths (FAVOR+ kernels with a key mask, Mamba's fused conv + scan,
    FlexAttention) on a right-padded fp16 batch: each sample's real positions as when it runs
    alone, padded positions 0."""
    from hvlm_export.modules import MambaLayer

    torch.manual_seed(0)
    layer = {
        "performer": lambda: PerformerAttention(256, 4),
        "performer_causal": lambda: PerformerAttention(256, 4, causal=True),
        "mamba": lambda: MambaLayer(256, state_size=8),
        "local_global_flex_causal": lambda: LocalGlobalAttention(256, 4, local_window=64, causal=True, impl="flex"),
        "local_global_flex": lambda: LocalGlobalAttention(256, 4, local_window=64, impl="flex"),
        "strided": lambda: StridedAttention(256, 4, stride=3),  # a key mask over the group heads
        "strided_causal": lambda: StridedAttention(256, 4, stride=3, causal=True),  # SDPA, no mask
        "strided_causal_triton": lambda: StridedAttention(256, 4, stride=3, causal=True, impl="triton"),
        "local_global": lambda: LocalGlobalAttention(256, 4, local_window=64),  # a mask: blocked
        "local_global_causal": lambda: LocalGlobalAttention(256, 4, local_window=64, causal=True),  # fused
    }[name]().cuda().half().eval()
    real = [700, 301, 1]
    x = torch.randn(3, max(real), 256, device="cuda", dtype=torch.float16)
    mask = torch.arange(max(real), device="cuda")[None] < torch.tensor(real, device="cuda")[:, None]
    y = layer(x, attention_mask=mask)
    for i, n in enumerate(real):
        alone = layer(x[i : i + 1, :n])
        assert _rel(y[i : i + 1, :n], alone) < HALF_REL, f"sample {i}: rel err {_rel(y[i : i + 1, :n], alone):.3g}"
        assert not y[i, n:].any()


def _sparse_case(kind: str, dim: int, heads: int, causal: bool, knob: int, globals_: int):
    """A sparse layer and its dense (L, K) mask: 'strided' (knob = stride) or 'local'
    (knob = local_window, ``globals_`` global tokens)."""
    if kind == "strided":
        layer = StridedAttention(dim, heads, stride=knob, causal=causal)
        return layer, lambda n: strided_mask(n, knob, causal), None
    layer = LocalGlobalAttention(dim, heads, local_window=knob, num_global_tokens=globals_, causal=causal)
    return layer, lambda n: local_global_mask(n, knob, globals_, causal), layer.global_tokens


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("kind, dim, heads, knob, globals_", [
    ("strided", 768, 12, 4, 0), ("strided", 96, 4, 3, 0), ("strided", 64, 2, 1, 0), ("strided", 128, 1, 7, 0),
    ("local", 768, 12, 128, 4), ("local", 96, 4, 9, 3), ("local", 64, 2, 1, 0), ("local", 256, 2, 300, 17),
], ids=lambda v: str(v))
def test_fused_sparse_kernel_matches_dense_reference(kind, dim, heads, knob, globals_, causal, dtype):
    """hvlm::sparse_attention (impl='triton') against dense masked attention in float64 at
    lengths around the tile sizes and below the stride, batch 1 and 3; never less accurate
    than the torch path in the same precision (head widths 64, 24, 32, 128: padded tiles)."""
    torch.manual_seed(knob)
    layer, mask, prefix = _sparse_case(kind, dim, heads, causal, knob, globals_)
    layer = layer.cuda().eval()
    ref = layer.double()
    for batch, length in ((1, 1), (3, 2), (1, 63), (3, 129), (1, 1000), (2, 4099)):
        x = torch.randn(batch, length, dim, device="cuda", dtype=torch.float64)
        want = dense_attention(ref, x, mask(length).cuda(), prefix=None if prefix is None else ref.global_tokens)
        layer.to(dtype)
        layer.impl = "triton"
        got = layer(x.to(dtype))
        layer.impl = "torch" if kind == "strided" else "blocked"
        torch_path = layer(x.to(dtype))
        layer.double()
        errors = f"L={length} B={batch}: rel err fused {_rel(got, want):.3g}, torch path {_rel(torch_path, want):.3g}"
        assert torch.isfinite(got).all(), errors
        assert _rel(got, want) < (HALF_REL if dtype == torch.float16 else 4 * HALF_REL), errors
        assert _rel(torch_path, want) < (HALF_REL if dtype == torch.float16 else 4 * HALF_REL), errors
        assert _rel(got, want) <= 1.5 * _rel(torch_path, want) + 2e-4, "the fused path is less accurate: " + errors


@torch.no_grad()
@pytest.mark.parametrize("kind", ["strided", "strided_sdpa", "local"])
def test_fused_sparse_kernel_is_causal_and_compiles(kind):
    """Causal: tokens after 700 made 30x larger leave every earlier output bit-identical;
    torch.compile(fullgraph=True) keeps the op whole and computes the same. 'strided_sdpa':
    strided's default path (SDPA over the group views), the same checks."""
    torch.manual_seed(1)
    strided = kind.startswith("strided")
    layer, _, _ = _sparse_case("strided" if strided else kind, 256, 4, True, 4 if strided else 64, 2)
    layer = layer.cuda().half().eval()
    layer.impl = "auto" if kind == "strided_sdpa" else "triton"
    x = torch.randn(2, 1500, 256, device="cuda", dtype=torch.float16)
    got = layer(x)
    louder = x.clone()
    louder[:, 700:] *= 30
    again = layer(louder)
    assert torch.isfinite(again).all()
    assert torch.equal(again[:, :700], got[:, :700]), "a later token changed an earlier output"
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    for length in (1500, 333):
        assert _rel(compiled(x[:, :length]), layer(x[:, :length])) < 1e-3


@torch.no_grad()
def test_auto_picks_the_fused_kernel_where_documented(monkeypatch):
    """impl='auto': strided never takes the kernel (flash SDPA over its group views is faster
    at every measured length), impl='triton' does; local/global takes it unless a non-causal
    call has a padding mask; float32 and autograd never take it."""
    from hvlm_export.modules import _sparse_fused

    calls = []
    real = _sparse_fused.sparse_attention
    monkeypatch.setattr(_sparse_fused, "sparse_attention", lambda *a: calls.append(a[0].shape[1]) or real(*a))

    def took(layer, x, mask=None):
        calls.clear()
        layer(x, mask)
        return bool(calls)

    strided = StridedAttention(64, 2, stride=2).cuda().half().eval()
    x = torch.randn(1, 8193, 64, device="cuda", dtype=torch.float16)
    assert not took(strided, x[:, :8192]) and not took(strided, x)
    strided.impl = "triton"
    assert took(strided, x)
    local = LocalGlobalAttention(64, 2, local_window=16).cuda().half().eval()
    mask = torch.ones(1, 100, dtype=torch.bool, device="cuda")
    assert took(local, x[:, :100]) and not took(local, x[:, :100], mask)
    local.causal = True
    assert took(local, x[:, :100], mask)
    assert not took(local.float(), x[:, :100].float())
    with torch.enable_grad():
        assert not took(local.half(), x[:, :100].clone().requires_grad_())


def _fused_layer(name: str) -> torch.nn.Module:
    from hvlm_export.modules import MambaLayer

    build = {"strided": lambda: StridedAttention(192, 3, stride=4, impl="triton"),
             "strided_causal": lambda: StridedAttention(192, 3, stride=3, causal=True, impl="triton"),
             "local_global": lambda: LocalGlobalAttention(192, 3, local_window=32, num_global_tokens=4),
             "performer": lambda: PerformerAttention(192, 3, nb_features=70),
             "performer_causal": lambda: PerformerAttention(192, 3, nb_features=70, causal=True),
             "mamba": lambda: MambaLayer(dim=192, state_size=8)}
    return build[name]().cuda().half().eval()


@torch.no_grad()
@pytest.mark.parametrize("name", ["strided", "strided_causal", "local_global", "performer", "performer_causal", "mamba"])
def test_compiled_fused_layers_launch_from_inductor(monkeypatch, name):
    """torch.compile(fullgraph=True, dynamic=True) of each fused half-precision layer computes
    what the eager layer computes at three lengths and two batch sizes, and
    once compiled it never calls the Python launchers of the Triton-backed ops: Inductor
    launches their kernels itself (hvlm_export.ops.triton_backed)."""
    import importlib

    # the op modules name their launchers at module level (hvlm_export.ops.triton_backed): patch there
    conv, favor, sparse = (importlib.import_module(f"hvlm_export.ops.{m}")
                           for m in ("causal_conv", "favor", "sparse_attention"))

    torch.manual_seed(0)
    layer = _fused_layer(name)
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    cases = [torch.randn(b, n, 192, device="cuda", dtype=torch.float16) for b, n in ((1, 700), (2, 333), (1, 1500))]
    want = [layer(x) for x in cases]
    first = [compiled(x) for x in cases]  # compiles (the batch of 2 recompiles: size 1 is specialised)
    for module, launcher in ((sparse, "sparse_attention_triton"), (favor, "favor_softmax_triton"),
                             (conv, "causal_conv1d_silu_triton")):
        monkeypatch.setattr(module, launcher, lambda *a, **k: pytest.fail("a Python launcher ran under compile"))
    for x, expected, before in zip(cases, want, first, strict=True):
        got = compiled(x)
        assert torch.isfinite(got).all() and torch.equal(got, before)
        assert _rel(got, expected) < 1e-2, f"{name} {tuple(x.shape)}: rel err {_rel(got, expected):.3g}"


@torch.no_grad()
@pytest.mark.parametrize("name", ["mamba", "performer", "performer_causal", "fused_projections"])
def test_captured_cuda_graphs_read_the_current_weights(name):
    """A call captured in a CUDA graph (torch.cuda.graph, as serving code does by hand) computes
    the values the layers otherwise keep between eager calls (Mamba's float32 scan parameters,
    Performer's scaled features, the stacked q / k / v weight) inside the graph: after the
    weights change in place and an eager call refreshes the kept copies, a replay gives what a
    fresh eager call gives, never stale or freed memory (hvlm_export/modules/_derived.py)."""
    from hvlm_export.modules import CrossMemoryAttention, MambaLayer

    torch.manual_seed(0)
    layer = {"mamba": lambda: MambaLayer(dim=192, state_size=8),
             "performer": lambda: PerformerAttention(192, 3, nb_features=70),
             "performer_causal": lambda: PerformerAttention(192, 3, nb_features=70, causal=True),
             "fused_projections": lambda: CrossMemoryAttention(192, 3)}[name]().cuda().half().eval()
    if name == "fused_projections":
        layer.fuse_projections()
    x = torch.randn(1, 700, 192, device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            layer(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = layer(x)
    if name == "mamba":
        layer.A_log.add_(0.1)
        layer.D.add_(0.5)
    elif name == "fused_projections":
        layer.k_proj.weight.mul_(1.5)
    else:
        layer.redraw_projection()
    want = layer(x)  # eager: the kept copies are rebuilt (the old ones freed)
    graph.replay()
    torch.cuda.synchronize()
    assert _rel(captured, want) < 1e-3, f"{name}: a replay read stale weights ({_rel(captured, want):.3g})"
