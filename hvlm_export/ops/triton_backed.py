"""What the Triton-backed CUDA ops share: how they are registered and when eager calls may
skip the op's dispatch.

``hvlm::sparse_attention``, ``hvlm::favor_softmax`` and ``hvlm::causal_conv1d_silu`` are
``torch.library.triton_op`` where Triton is importable: torch.compile then traces through the
op to its Triton kernels (and the torch glue between them) and launches them from Inductor's
generated code, with no Python launcher and no custom-op dispatch per call (both are host
time, which short sequences are bound by; docs/BENCHMARKS.md). Without Triton (CPU-only
installs) they are plain custom ops with the same schema, so that exported and CPU code sees
the same names; calling one there fails. Each op also has a fake implementation, which gives
output shapes without Triton.

How a launcher must be written, for torch to see its kernels: when a triton_op is registered,
torch reads the op's body and the functions it calls (by name, through module globals) for
literal ``wrap_triton(<kernel>)`` calls, and keeps the kernels it finds
(``torch._library.triton.get_triton_kernels_for_op``). Their source is part of torch.compile's
cache key (AOTAutograd's cache): a kernel it does not find could be edited and an old compiled
graph still served. So each op module imports its launcher at module level (where Triton is
importable) and every launch site reads ``(wrap_triton(_kernel) if traced else _kernel)[grid]``:
wrapped when the launcher runs as the op's body (``traced``; torch.compile traces the launch),
the kernel itself for a direct eager launch (wrap_triton's eager call path costs host time of
the order of the launch itself, measured on the H200 machine: docs/BENCHMARKS.md).
tests/ops/test_triton_backed.py checks that every kernel is found.

That cache key holds the kernels' source and the global constants they read, not the Python
between them (the op's body: block sizes, tiles, the torch ops around the launches): a change
there alone would let a compiled graph built before it be served after it, for example after
upgrading hvlm-export. So each kernel module defines ``OP_SOURCE``, a constexpr hash of its own
source and its op module's (``source_hash``), and one kernel of each op reads it.

The Gluon scan kernel of ``hvlm::selective_scan`` is not traceable this way (Inductor compiles
``triton.jit`` kernels only), so that op stays an opaque custom op.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["TRITON_AVAILABLE", "direct_launch_ok", "require_kernel", "source_hash", "triton_backed_op"]

#: whether the Triton kernels can be imported (a constant, so torch.compile folds checks of it)
TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def source_hash(*paths: str | Path) -> int:
    """A 62-bit hash of these files' bytes (with this file's: the op wrapper is glue too), for
    a kernel to read as a constexpr (module docstring: torch.compile's cache key)."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in paths:
        digest.update(Path(path).read_bytes())
    return int.from_bytes(digest.digest()[:8], "big") >> 2


def triton_backed_op(name: str) -> Callable:
    """Decorator registering ``name`` ("hvlm::...") from a function whose Triton launches go
    through ``torch.library.wrap_triton``: a triton_op where Triton is importable, else a
    custom op with the same schema (torch.library.triton_op would warn at import there)."""
    if TRITON_AVAILABLE:
        return torch.library.triton_op(name, mutates_args=())
    return torch.library.custom_op(name, mutates_args=())


def require_kernel(op: str, t: torch.Tensor) -> None:
    """Raise ValueError unless ``t`` is a CUDA tensor, and RuntimeError unless Triton is
    importable: the Triton-backed ops have no other kernel (the layers keep their torch paths
    for other devices)."""
    if t.device.type != "cuda":
        raise ValueError(f"{op} runs a Triton kernel on CUDA tensors; got a tensor on {t.device}.\n"
                         "Note: the layers' torch paths (impl='torch') serve other devices.")
    if not TRITON_AVAILABLE:
        raise RuntimeError(f"{op} needs Triton, which is not installed.\n"
                           "Note: CUDA builds of torch ship it; impl='torch' runs without it.")


def direct_launch_ok() -> bool:
    """Whether an eager call may launch a fused kernel without the op: not while
    torch.compile, torch.jit.trace or a dispatch mode (FakeTensorMode, FlopCounterMode, ...)
    is watching, which must see the op (a direct launch would be invisible to them)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or _get_current_dispatch_mode() is not None)
