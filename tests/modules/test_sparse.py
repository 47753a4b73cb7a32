"""Strided, local/global and cross-memory attention against dense masked attention."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hvlm_export.modules import CrossMemoryAttention, LocalGlobalAttention, StridedAttention
from tests.references import dense_attention, local_global_mask, strided_mask

# float64 on both sides: the only difference is summation order, so 1e-10 is generous
# while a wrong mask or window gives errors of order 1e-1.
ATOL = 1e-10

STRIDES = [1, 3, 4]
WINDOWS = [1, 2, 7, 16]
# below, at and above each stride / window, non-multiples, and L = 1
LENGTHS = [1, 2, 3, 4, 5, 8, 15, 16, 17, 35, 70, 101]


def _x(batch: int, length: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("length", LENGTHS)
def test_strided_matches_dense(stride, length, causal):
    layer = StridedAttention(dim=32, num_heads=4, stride=stride, causal=causal).double().eval()
    for batch in (1, 3):
        x = _x(batch, length, 32)
        got = layer(x)
        want = dense_attention(layer, x, strided_mask(length, stride, causal))
        err = (got - want).abs().max().item()
        assert err < ATOL, f"stride={stride} L={length} B={batch}: max abs err {err:.3g}"



class _Ops(TorchDispatchMode):
    """Records the aten ops a call runs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_strided_groups_are_views_of_the_projections(causal):
    """L a multiple of the stride: the residue groups are the heads of one SDPA call over
    views of the three projections' outputs, and the output is the out projection of a view
    of SDPA's: no padding, copy, concatenation or mask. A ragged L pads the input once and
    (non-causal) makes two SDPA calls."""
    layer = StridedAttention(dim=32, num_heads=4, stride=4, causal=causal).eval()
    copies = ("clone", "copy", "cat", "pad", "contiguous", "index", "expand", "where", "masked")
    for length, pads, calls in ((64, 0, 1), (63, 1, 1 if causal else 2)):
        x = _x(2, length, 32).float()
        with torch.no_grad(), _Ops() as rec:
            layer(x)
        sdpa = [op for op in rec.ops if "scaled_dot_product" in op]
        assert len(sdpa) == calls, rec.ops
        assert sum("constant_pad_nd" in op for op in rec.ops) == pads + (length % 4 and not causal), rec.ops
        if length % 4 == 0:
            assert not [op for op in rec.ops if any(c in op for c in copies)], rec.ops


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("num_global", [0, 3])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("length", LENGTHS)
def test_local_global_matches_dense(window, num_global, length, causal):
    layer = LocalGlobalAttention(
        dim=32, num_heads=4, local_window=window, num_global_tokens=num_global, causal=causal
    ).double().eval()
    for batch in (1, 2):
        x = _x(batch, length, 32)
        got = layer(x)
        want = dense_attention(
            layer, x, local_global_mask(length, window, num_global, causal), prefix=layer.global_tokens
        )
        err = (got - want).abs().max().item()
        assert err < ATOL, f"window={window} G={num_global} L={length} B={batch}: max abs err {err:.3g}"


@pytest.mark.parametrize("mem_len", [1, 6, 40])
@pytest.mark.parametrize("length", [1, 9])
def test_cross_memory_matches_dense(length, mem_len):
    layer = CrossMemoryAttention(dim=32, num_heads=4).double().eval()
    x, memory = _x(2, length, 32), _x(2, mem_len, 32, seed=1)
    want = dense_attention(layer, x, torch.ones(length, mem_len, dtype=torch.bool), kv_source=memory)
    err = (layer(x, memory) - want).abs().max().item()
    assert err < ATOL, f"max abs err {err:.3g}"
    self_want = dense_attention(layer, x, torch.ones(length, length, dtype=torch.bool))
    assert (layer(x) - self_want).abs().max().item() < ATOL, "memory=None must mean memory = x"


def test_fuse_with_memory():
    layer = CrossMemoryAttention(dim=32, num_heads=4).eval()
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 3, 32)
    for ratio in (0.0, 0.3, 1.0):
        want = (1 - ratio) * x + ratio * layer(x, memory)
        assert torch.allclose(layer.fuse_with_memory(x, memory, fusion_ratio=ratio), want, atol=1e-6)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="fusion_ratio"):
            layer.fuse_with_memory(x, memory, fusion_ratio=bad)


def test_stride_one_is_full_attention():
    layer = StridedAttention(dim=32, num_heads=4, stride=1).double().eval()
    x = _x(2, 13, 32)
    want = dense_attention(layer, x, torch.ones(13, 13, dtype=torch.bool))
    assert (layer(x) - want).abs().max().item() < ATOL


def test_padding_never_leaks():
    """Outputs at real positions do not change when the sequence is extended with more tokens
    beyond the causal horizon, and padded rows never produce NaN."""
    layer = LocalGlobalAttention(dim=32, num_heads=4, local_window=6, causal=True).double().eval()
    x = _x(1, 11, 32)
    longer = torch.cat([x, _x(1, 20, 32, seed=5)], dim=1)
    assert torch.allclose(layer(x), layer(longer)[:, :11], atol=ATOL)
    strided = StridedAttention(dim=32, num_heads=4, stride=8, causal=True).double().eval()
    assert torch.allclose(strided(x), strided(longer)[:, :11], atol=ATOL)


def test_dropout_only_in_training():
    layer = StridedAttention(dim=32, num_heads=4, stride=2, dropout=0.5)
    x = torch.randn(2, 9, 32)
    layer.eval()
    assert torch.equal(layer(x), layer(x)), "eval must be deterministic"
    layer.train()
    torch.manual_seed(0)
    a = layer(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, layer(x)), "dropout must act in training"


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_local_global_cost_is_linear(causal):
    """The key span per query block is fixed by the window: no L x L anything."""
    layer = LocalGlobalAttention(dim=32, num_heads=4, local_window=8, num_global_tokens=2, causal=causal)
    w, r = layer.block, layer.radius
    for length in (100, 1000):
        mask = layer._mask(length, -(-length // w), torch.device("cpu"))
        span = 2 + w + (r if causal else 2 * r)
        assert mask.shape == (-(-length // w), w, span), mask.shape


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("window, num_global", [(1, 0), (7, 3), (128, 4), (300, 2)])
@pytest.mark.parametrize("length", [1, 127, 128, 129, 700])
def test_flex_block_table_covers_exactly_the_window(window, num_global, length, causal):
    """The FlexAttention path visits a key block iff some query of the query block may attend
    to some key in it (checked against the dense token mask, block by block)."""
    from hvlm_export.modules._flex import BLOCK, window_block_mask

    dense = local_global_mask(length, window, num_global, causal)  # (L, G + L)
    nq, nkv = -(-length // BLOCK), -(-(length + num_global) // BLOCK)
    padded = torch.zeros(nq * BLOCK, nkv * BLOCK, dtype=torch.bool)
    padded[:length, : length + num_global] = dense
    want = padded.view(nq, BLOCK, nkv, BLOCK).any(3).any(1)
    got = window_block_mask(length, num_global, window // 2, causal, torch.device("cpu")).to_dense()[0, 0].bool()
    assert torch.equal(got[:, :nkv], want), f"block table\n{got.int()}\nwanted\n{want.int()}"
    assert got.sum(1).max() <= -(-(BLOCK + 2 * (window // 2)) // BLOCK) + 2


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("length", [1, 5, 129, 300])
def test_flex_path_matches_dense_uncompiled(length, causal, monkeypatch):
    """The FlexAttention path's arithmetic (eager flex_attention, which applies the mask_mod
    everywhere; the block table is checked above) against dense masked attention."""
    from hvlm_export.modules import _flex

    monkeypatch.setattr(_flex, "_compiled_window_attention", lambda: _flex._window_attention)
    layer = LocalGlobalAttention(dim=32, num_heads=4, local_window=20, num_global_tokens=3, causal=causal,
                                 impl="flex").double().eval()
    x = _x(2, length, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.compile.*")  # eager flex_attention says it is slow
        got = layer(x)
    want = dense_attention(layer, x, local_global_mask(length, 20, 3, causal), prefix=layer.global_tokens)
    err = (got - want).abs().max().item()
    assert err < ATOL, f"max abs err {err:.3g}"


def test_flex_impl_has_no_dropout():
    layer = LocalGlobalAttention(dim=32, num_heads=4, local_window=8, dropout=0.1, impl="flex").train()
    with pytest.raises(ValueError, match="no attention dropout"):
        layer(torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="valid choices are auto, blocked, flex, triton"):
        LocalGlobalAttention(dim=32, num_heads=4, impl="torch")


@pytest.mark.parametrize("layer", [StridedAttention(32, 4, stride=3, impl="triton"),
                                   LocalGlobalAttention(32, 4, local_window=8, impl="triton")], ids=["strided", "local"])
def test_triton_impl_refuses_what_it_cannot_run(layer):
    """impl='triton' never falls back silently: a call it cannot run (here: a float32 CPU
    input, and a padding mask on a non-causal layer) is a ValueError saying why."""
    with pytest.raises(ValueError, match="impl='triton' runs the fused .* on float16/bfloat16 CUDA.*float32 on cpu"):
        layer(torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="a padding mask"):
        layer(torch.randn(1, 5, 32), torch.ones(1, 5))
    layer.train().dropout = 0.1
    with pytest.raises(ValueError, match="attention dropout in training"):
        layer(torch.randn(1, 5, 32))


@pytest.mark.parametrize("layer", [StridedAttention(32, 2, stride=1), StridedAttention(32, 2, stride=3, causal=True),
                                   LocalGlobalAttention(32, 2, local_window=8)], ids=["strided1", "strided3", "local"])
def test_export_keeps_batch_and_length_unbounded(layer):
    """The fused kernel's fit checks (group length, grid size) run only for CUDA half
    inference, so a torch.export of the layer puts no bound on B or L (they once became
    guards such as L <= 4096 and 4 B <= 65535), and the program runs past those bounds."""
    from torch.export import Dim

    layer.eval()
    program = torch.export.export(layer, (torch.randn(2, 50, 32),), strict=False,
                                  dynamic_shapes={"x": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}})  # as the exporter does
    for symbol, bounds in program.range_constraints.items():
        assert bounds.upper > 10**9, f"{symbol} is bounded: {bounds}"
    x = torch.randn(1, 4100, 32)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), layer(x), atol=1e-5)


def test_fused_kernels_are_never_exported():
    """kernels_allowed_here: True eagerly and under torch.compile, False while torch.export
    (non-strict, as torch.onnx.export(dynamo=True) runs it, or strict) traces the module."""
    from hvlm_export.modules._attention import kernels_allowed_here

    class Probe(torch.nn.Module):
        def forward(self, x):
            return x + (1.0 if kernels_allowed_here() else 0.0)  # the answer at trace time, baked in

    x = torch.zeros(2)
    allowed = [Probe()(x), torch.compile(Probe(), backend="eager", fullgraph=True)(x),
               torch.export.export(Probe(), (x,), strict=False).module()(x),
               torch.export.export(Probe(), (x,), strict=True).module()(x)]
    assert [bool(t[0]) for t in allowed] == [True, True, False, False]


def test_exporting_reads_the_flag_not_the_folded_call(monkeypatch):
    """Inside torch.compile some torch releases (2.11) fold ``torch.compiler.is_exporting()``
    to True; ``exporting`` reads the flag that call returns instead."""
    from hvlm_export.modules._attention import exporting

    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)  # what 2.11's Dynamo sees
    assert not exporting()
    monkeypatch.setattr(torch.compiler, "_is_exporting_flag", True)
    assert exporting()
    monkeypatch.delattr(torch.compiler, "_is_exporting_flag")  # a release without the flag: the call decides
    assert exporting()
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: False)
    assert not exporting()


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_exported_strided_graph_keeps_the_general_path(causal):
    """torch.export (non-strict, as the exporter runs it) at a length the stride divides keeps
    the general graph, the pad and (non-causal) both SDPA calls, not the eager shortcuts taken
    when s divides L: the graph must compute any L. (The program itself still carries guards
    that torch's own stride logic adds on these shapes; the ONNX exports are validated at other
    lengths, tests/exporters.)"""
    from torch.export import Dim

    layer = StridedAttention(dim=32, num_heads=4, stride=3, causal=causal).eval()
    program = torch.export.export(layer, (torch.randn(2, 48, 32),), strict=False,
                                  dynamic_shapes={"x": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}})
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert sum("pad" in t for t in targets) >= 1, targets
    assert sum("scaled_dot_product" in t for t in targets) == (1 if causal else 2), targets


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compiled_strided_graph_is_one_graph(dynamic):
    """torch.compile at a length the stride divides: one graph. With static shapes it makes the
    one SDPA call eager calls make (the empty second batch broke the static CUDA graph in three,
    torch 2.11 on the H200); with symbolic sizes it keeps both calls (any L)."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append([str(node.target) for node in gm.graph.nodes if node.op == "call_function"])
        return gm.forward

    layer = StridedAttention(dim=32, num_heads=4, stride=4).eval()
    x = torch.randn(2, 64, 32)
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(layer, backend=capture, dynamic=dynamic, fullgraph=True)(x)
        torch.testing.assert_close(got, layer(x))
    assert len(graphs) == 1
    assert sum("scaled_dot_product" in t for t in graphs[0]) == (2 if dynamic else 1), graphs


def test_a_stride_longer_than_the_sequence_pads_nothing():
    """Eager calls clamp the stride to L (exact: each token is alone in its group), so a stride
    far beyond L allocates no padding and still matches the dense reference."""
    layer = StridedAttention(dim=32, num_heads=4, stride=10**9).double().eval()
    x = _x(2, 5, 32)
    want = dense_attention(layer, x, strided_mask(5, 10**9, False))
    assert (layer(x) - want).abs().max().item() < ATOL
