"""A real Triton Inference Server on 127.0.0.1 over the project's runtime: :func:`serve`.

nvidia-pytriton (the optional extra ``serve``) starts the ``tritonserver`` it bundles and hands
each batch Triton forms to a Python function here, which runs it through
``hvlm_export.runtime`` (ONNX Runtime, or a TensorRT engine where TensorRT is installed). HTTP,
gRPC and Prometheus metrics listen on 127.0.0.1 only.

Batching: Triton's dynamic batcher joins requests of the same shape only, unless an input
allows ragged batches. For a model exported with padding masks (``--with-mask``) the server
marks its inputs ``allow_ragged_batch``, so Triton hands requests of different lengths over
together, and a :class:`~hvlm_export.serving.batching.PaddingBatcher` right-pads them into
one batch with the masks and cuts every answer back to its request; clients send x (and
memory) alone, the masks are optional inputs. Without masks, requests of different lengths
run in separate batches. Either way every response is the model's output for that request
alone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sysconfig
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hvlm_export.errors import ServingError
from hvlm_export.serving.batching import MASKS, BatchStats, PaddingBatcher

__all__ = ["serve", "ServerInfo"]

_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


@dataclass(frozen=True)
class ServerInfo:
    """Where a running server listens."""

    model: str
    http_port: int
    grpc_port: int
    metrics_port: int
    #: what the padding batcher ran (None: the model has no padding masks)
    stats: BatchStats | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _import_pytriton():
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as err:
        raise ServingError(f"nvidia-pytriton is not importable ({err})",
                           "install the serving extra: pip install 'hvlm-export[serve]'.") from err
    return DynamicBatcher, ModelConfig, Tensor, Triton, TritonConfig


def _batch_function(session) -> Callable:
    """Triton hands over a list of requests; run those of one shape as one batch (in order) and
    give every request its own rows back."""

    def infer(requests):
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(tuple((k, v.shape[1:]) for k, v in sorted(request.items())), []).append(i)
        answers: list[dict | None] = [None] * len(requests)
        for members in groups.values():
            feed = {k: np.concatenate([requests[i][k] for i in members]) for k in requests[members[0]]}
            out = session.run(feed)
            start = 0
            for i in members:
                rows = len(next(iter(requests[i].values())))
                answers[i] = {k: v[start:start + rows] for k, v in out.items()}
                start += rows
        return answers

    return infer


def _padded_function(batcher: PaddingBatcher) -> Callable:
    """Hand every request of this model instance to the shared padding batcher."""

    def infer(requests):
        return batcher.run([{k: v for k, v in request.items()} for request in requests])

    return infer


@contextlib.contextmanager
def _ragged(names: set[str]):
    """Mark these inputs ``allow_ragged_batch`` in the configs pytriton generates (it has no
    option for it), so that Triton's dynamic batcher joins requests whose sequence lengths
    differ and hands them to the model together; yields whether that was possible (False:
    this pytriton builds configs differently, and Triton joins equal shapes only)."""
    try:
        from pytriton.model_config import generator
        original = generator.ModelConfigGenerator._set_model_signature
    except (ImportError, AttributeError):
        yield False
        return

    def with_ragged_inputs(self, model_config):
        original(self, model_config)
        for item in model_config.get("input", []):
            if item.get("name") in names:
                item["allow_ragged_batch"] = True

    generator.ModelConfigGenerator._set_model_signature = with_ragged_inputs
    try:
        yield True
    finally:
        generator.ModelConfigGenerator._set_model_signature = original


def serve(
    model: str | os.PathLike,
    *,
    name: str | None = None,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    max_batch_size: int = 8,
    max_queue_delay_us: int = 100,
    instances: int | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[ServerInfo], None] | None = None,
) -> None:
    """Serve ``model`` (an exported .onnx, or an engine) until ``stop`` is set (forever when
    None), then shut the server down. A port of 0 picks a free one; ``on_ready`` gets the
    ports once the server answers. ``instances``: Triton model instances (default 1; their
    requests share the padding batcher of a masked model)."""
    from hvlm_export import runtime

    if max_batch_size < 1 or max_queue_delay_us < 0 or (instances is not None and instances < 1):
        raise ServingError(f"need --max-batch-size >= 1, --max-queue-delay-us >= 0 and --instances >= 1, got "
                           f"{max_batch_size}, {max_queue_delay_us} and {instances}")
    DynamicBatcher, ModelConfig, Tensor, Triton, TritonConfig = _import_pytriton()
    session = runtime.load(model)
    unsupported = [t.name for t in session.inputs + session.outputs if str(t.dtype) not in _DTYPES]
    if unsupported:
        raise ServingError(f"tensors {unsupported} have a dtype Triton's Python side cannot carry (bf16?)",
                           "serve an fp32 or fp16 export.")
    if any(t.shape[0] != "batch" for t in session.inputs):
        raise ServingError("the model has a fixed batch axis (exported with --static?); serve needs a dynamic one")
    name = name or Path(model).stem
    ports = [p or _free_port() for p in (http_port, grpc_port, metrics_port)]
    libdir = sysconfig.get_config_var("LIBDIR") or ""  # the Python backend stub loads libpython from here
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)
    config = TritonConfig(http_address="127.0.0.1", grpc_address="127.0.0.1", http_port=ports[0],
                          grpc_port=ports[1], metrics_port=ports[2], exit_timeout_secs=5)

    def spec(t):
        return Tensor(name=t.name, dtype=_DTYPES[str(t.dtype)], optional=t.name in MASKS,
                      shape=tuple(-1 if isinstance(d, str) else d for d in t.shape[1:]))

    masked = "attention_mask" in {t.name for t in session.inputs}
    batcher = PaddingBatcher(session, max_batch_size) if masked else None
    infer = _padded_function(batcher) if batcher else _batch_function(session)
    ragged_inputs = {t.name for t in session.inputs} if masked else set()
    with _ragged(ragged_inputs), Triton(config=config) as triton:
        triton.bind(model_name=name, infer_func=[infer] * (instances or 1),
                    inputs=[spec(t) for t in session.inputs], outputs=[spec(t) for t in session.outputs],
                    config=ModelConfig(max_batch_size=max_batch_size,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=max_queue_delay_us)),
                    strict=True)
        triton.run()
        if on_ready is not None:
            on_ready(ServerInfo(name, *ports, stats=batcher.stats if batcher else None))
        (stop or threading.Event()).wait()
