"""The Triton-backed CUDA ops (hvlm_export.ops.triton_backed) without a GPU: wrong devices are
refused by name, and where Triton is installed torch.compile's graph of every fused layer holds
the Triton kernels themselves (traced through the triton_op) rather than an opaque op.
On a GPU: tests/gpu/test_attention_paths.py::test_compiled_fused_layers_launch_from_inductor."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util

import pytest
import torch
from torch._functorch.aot_autograd import aot_export_module
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import hvlm_export.ops.favor  # noqa: F401  (registers hvlm::favor_softmax)
import hvlm_export.ops.sparse_attention  # noqa: F401  (registers hvlm::sparse_attention)
from hvlm_export.modules import LocalGlobalAttention, MambaLayer, PerformerAttention, StridedAttention
import hvlm_export.ops.causal_conv  # noqa: F401  (registers hvlm::causal_conv1d_silu)
from hvlm_export.ops import triton_backed
from hvlm_export.ops.triton_backed import TRITON_AVAILABLE, require_kernel

NEEDS_TRITON = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="Triton is not installed (it ships with CUDA torch builds)")


def test_triton_available_is_whether_triton_imports():
    assert TRITON_AVAILABLE == (importlib.util.find_spec("triton") is not None)


@pytest.mark.parametrize("call", [
    lambda x: torch.ops.hvlm.sparse_attention(x, x, x, None, None, 2, -1, False, 0.3),
    lambda x: torch.ops.hvlm.favor_softmax(x, x, x, torch.randn(8, 8), 1e-4, False, None),
    lambda x: torch.ops.hvlm.causal_conv1d_silu(x[0], torch.randn(8, 1, 4), None),
], ids=["sparse_attention", "favor_softmax", "causal_conv1d_silu"])
def test_ops_refuse_cpu_tensors_by_name(call):
    """A CPU tensor gets a ValueError naming the op and the way out (impl='torch'), with or
    without Triton installed, never a Triton launch error."""
    x = torch.randn(1, 5, 2, 8, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"hvlm::\w+ runs a Triton kernel on CUDA tensors; got a tensor on cpu") as err:
        call(x)
    assert "impl='torch'" in str(err.value)


def test_require_kernel(monkeypatch):
    """CUDA tensors pass where Triton is importable; other devices are a ValueError, a CUDA
    tensor without Triton a RuntimeError naming the way out."""
    with FakeTensorMode():
        cuda = torch.empty(2, device="cuda")
    with pytest.raises(ValueError, match="got a tensor on meta"):
        require_kernel("op", torch.empty(2, device="meta"))
    monkeypatch.setattr(triton_backed, "TRITON_AVAILABLE", True)
    require_kernel("op", cuda)
    monkeypatch.setattr(triton_backed, "TRITON_AVAILABLE", False)
    with pytest.raises(RuntimeError, match=r"op needs Triton, which is not installed(.|\n)*impl='torch'"):
        require_kernel("op", cuda)


@NEEDS_TRITON
@pytest.mark.parametrize("op, kernels", [
    ("hvlm::sparse_attention", {"_sparse_fwd"}),
    ("hvlm::favor_softmax", {"_row_stats", "_key_sums", "_sum_splits", "_query_out", "_carry", "_causal_out"}),
    ("hvlm::causal_conv1d_silu", {"_conv_silu_kernel"}),
])
def test_torch_finds_every_kernel_of_each_op(op, kernels):
    """torch reads each triton_op's body for its kernels and puts their source in
    torch.compile's cache key: every kernel the op launches must be found, or an edited
    kernel could be served from an old compiled graph (hvlm_export.ops.triton_backed)."""
    from torch._library.triton import get_triton_kernels_for_op

    found = {kernel.fn.__name__ for kernel in get_triton_kernels_for_op(op)}
    assert found == kernels



def test_source_hash_follows_every_byte(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    first = triton_backed.source_hash(a, b)
    assert 0 <= first < 2**62 and triton_backed.source_hash(a, b) == first
    b.write_text("y = 3\n")
    assert triton_backed.source_hash(a, b) != first


@NEEDS_TRITON
@pytest.mark.parametrize("op, module, op_module", [
    ("hvlm::sparse_attention", "sparse_attention_triton", "sparse_attention.py"),
    ("hvlm::favor_softmax", "favor_triton", "favor.py"),
    ("hvlm::causal_conv1d_silu", "causal_conv_triton", "causal_conv.py"),
])
def test_the_ops_python_is_in_the_compile_cache_key(op, module, op_module):
    """torch.compile's cache key holds each triton_op's kernels' source and the constants they
    read (the transitive closure torch computes), not the Python between them: one kernel of
    each op reads OP_SOURCE, the hash of its module's and its op module's source."""
    from pathlib import Path

    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code
    from torch._library.triton import get_triton_kernels_for_op

    kernels_module = importlib.import_module(f"hvlm_export.ops.{module}")
    path = Path(kernels_module.__file__)
    want = triton_backed.source_hash(path, path.with_name(op_module))
    assert kernels_module.OP_SOURCE.value == want
    closure = "".join(user_defined_triton_kernel_transitive_closure_source_code(k)
                      for k in get_triton_kernels_for_op(op))
    assert f"tl.constexpr({want!r})" in closure


class _Tuple(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return (self.layer(x),)


def _compiled_graph_targets(layer: torch.nn.Module, length: int) -> list[str]:
    """The call targets of the graph AOTAutograd hands Inductor for ``layer`` in float16 on
    (fake) CUDA inputs: what torch.compile compiles."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = _Tuple(layer.half().eval())
    for module in model.modules():  # fake CUDA parameters (this torch build may have no CUDA)
        for key, p in list(module._parameters.items()):
            if p is not None:
                fake = FakeTensor(mode, p.detach().to("meta"), torch.device("cuda"))
                module._parameters[key] = torch.nn.Parameter(fake, requires_grad=False)
    with mode, torch.no_grad():
        x = torch.empty(1, length, layer.dim, device="cuda", dtype=torch.float16)
        graph, _ = aot_export_module(model, [x], trace_joint=False)
    return [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]


@NEEDS_TRITON
@pytest.mark.parametrize("name, layer, kernels, opaque", [
    ("strided", lambda: StridedAttention(64, 2, stride=4, impl="triton"), 1, []),
    ("strided_causal", lambda: StridedAttention(64, 2, stride=3, causal=True, impl="triton"), 1, []),
    ("strided_sdpa", lambda: StridedAttention(64, 2, stride=3, causal=True), 0, []),
    ("local_global", lambda: LocalGlobalAttention(64, 2, local_window=16, num_global_tokens=2), 1, []),
    ("performer", lambda: PerformerAttention(64, 2, nb_features=32), 4, []),
    ("mamba", lambda: MambaLayer(dim=32, state_size=4), 1, ["hvlm.selective_scan.default"]),
])
def test_compile_sees_the_triton_kernels(monkeypatch, name, layer, kernels, opaque):
    """Each fused layer's compiled graph launches its Triton kernels as graph nodes (Inductor
    emits their launches), and the only opaque hvlm op left is the Gluon scan. Strided
    attention's default path is SDPA over views, with no Triton kernel (on this fake CUDA
    device SDPA decomposes; tests/gpu covers it compiled on a GPU)."""
    # the launchers enter torch.cuda.device(q.device), which needs a CUDA build of torch
    monkeypatch.setattr(torch.cuda, "device", lambda *_: contextlib.nullcontext())
    torch.manual_seed(0)
    targets = _compiled_graph_targets(layer(), 100)
    assert targets.count("triton_kernel_wrapper_functional") == kernels, (name, targets)
    assert [t for t in targets if t.startswith("hvlm.")] == opaque, (name, targets)


@NEEDS_TRITON
def test_favor_length_limit_is_the_kernels_grid():
    """MAX_LENGTH (checked by PerformerAttention without importing Triton) is what the kernels'
    row-block grid axis (65535 blocks of BLOCK_L rows) holds."""
    from hvlm_export.ops import favor, favor_triton

    assert favor.MAX_LENGTH == favor_triton.BLOCK_L * 65535


def test_favor_op_refuses_sequences_longer_than_its_grid():
    from hvlm_export.ops import favor

    favor._check_length(torch.empty(1, 2, favor.MAX_LENGTH, 8, device="meta"))
    with pytest.raises(ValueError, match="at most 4194240 tokens"):
        favor._check_length(torch.empty(1, 2, favor.MAX_LENGTH + 1, 8, device="meta"))


@NEEDS_TRITON
def test_the_kernels_reading_op_source_compile_for_sm90():
    """The kernels that read OP_SOURCE (one per op) compile for an H100 / H200 with Triton's
    own toolchain: no GPU needed."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hvlm_export.ops import causal_conv_triton, favor_triton, sparse_attention_triton

    def signature(kernel, floats=(), float_ptrs=()):
        return {p.name: ("*fp32" if p.name in float_ptrs else "*fp16") if p.name.endswith("_ptr")
                else ("fp32" if p.name in floats else "i32") for p in kernel.params if not p.is_constexpr}

    cases = [
        (causal_conv_triton._conv_silu_kernel, signature(causal_conv_triton._conv_silu_kernel),
         dict(K=4, HAS_BIAS=True, BLOCK_T=64, BLOCK_D=64)),
        (favor_triton._row_stats, signature(favor_triton._row_stats, ("half_sq_scale",),
                                            ("rowmax_q_ptr", "rowmax_k_ptr", "logw_ptr")),
         dict(D=64, D_PAD=64, BLOCK_L=64, BLOCK_M=64)),
        (sparse_attention_triton._sparse_fwd, signature(sparse_attention_triton._sparse_fwd, ("scale",)),
         dict(D=64, D_PAD=64, G_PAD=16, CAUSAL=False, WINDOW=False, BLOCK_M=128, BLOCK_N=64)),
    ]
    for kernel, sig, constexprs in cases:
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert ".entry" in compiled.asm["ptx"], kernel.__name__
