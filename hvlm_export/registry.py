"""The registry of mechanisms: the one place that knows every mechanism.

Each :class:`ModelSpec` says how to build the module, what its graph inputs are and which
axes are dynamic, the default opset, which sequence lengths stress it (below / at / above
each window or stride), the default parity tolerances per precision and its benchmark cases.
Export, validate, bench and the tests iterate :data:`REGISTRY`; lookups go through here too:
:func:`get` (by name), :func:`spec_for_config` (a config-built stack), :func:`spec_for_module`
(an instance) and :func:`resolve_model` (whatever a user passes to export).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from hvlm_export.artifacts import MASK_INPUTS
from hvlm_export.errors import ExportError, UnknownMechanismError
from hvlm_export.modules import (
    CrossMemoryAttention,
    HierarchicalAttentionBlock,
    LinearAttentionBlock,
    LocalGlobalAttention,
    MambaLayer,
    PerformerAttention,
    StridedAttention,
)
from hvlm_export.modules.stack import AttentionStack, StackConfig, build_stack, load_config
from hvlm_export.tolerances import INPUT_SCALES, LARGE_INPUT_TOLERANCES, NOISE_SIGMAS, TOLERANCES, Tolerance
from hvlm_export.user_models import build_module, is_import_path

__all__ = [
    "NOISE_SIGMAS",
    "Tolerance",
    "TOLERANCES",
    "LARGE_INPUT_TOLERANCES",
    "INPUT_SCALES",
    "ModelSpec",
    "ResolvedModel",
    "REGISTRY",
    "PRECISIONS",
    "DTYPES",
    "DEFAULT_OPSET",
    "get",
    "names",
    "spec_for_config",
    "spec_for_module",
    "spec_for_user_module",
    "USER_MODULE",
    "resolve_model",
    "default_dynamic_axes",
    "MASK_INPUTS",
    "padding_mask",
]

PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_OPSET = 20
_AXES = {"x": {0: "batch", 1: "seq"}, "memory": {0: "batch", 1: "mem_seq"}, "y": {0: "batch", 1: "seq"},
         "attention_mask": {0: "batch", 1: "seq"}, "memory_mask": {0: "batch", 1: "mem_seq"}}


def padding_mask(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """A right-padding mask (B, L) int64: the first sample is whole, the others keep a random
    number of real tokens (at least 1)."""
    real = torch.randint(1, length + 1, (batch,), generator=generator)
    real[0] = length
    return (torch.arange(length)[None] < real[:, None]).to(torch.int64)


def default_dynamic_axes(inputs: tuple[str, ...], outputs: tuple[str, ...]) -> dict[str, dict[int, str]]:
    """Batch and sequence axes of x / memory / y dynamic."""
    return {n: dict(_AXES.get(n, {0: "batch", 1: "seq"})) for n in (*inputs, *outputs)}




def _window_lengths(size: int) -> list[int]:
    """Lengths around a window / stride: 1, size-1, size, size+1, 2*size+3."""
    return sorted({1, max(1, size - 1), size, size + 1, 2 * size + 3})


@dataclass(frozen=True)
class ModelSpec:
    """How to build, feed, export and judge one mechanism (or a config-built stack)."""

    name: str
    summary: str
    factory: Callable[..., nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: A small instance for tests and quick CPU runs (overrides of ``defaults``).
    small: Mapping[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ("x",)
    outputs: tuple[str, ...] = ("y",)
    #: precision -> pass rule at unit input scale, and at a large input scale
    tolerances: Mapping[str, Tolerance] = field(default_factory=lambda: TOLERANCES)
    large_input_tolerances: Mapping[str, Tolerance] = field(default_factory=lambda: LARGE_INPUT_TOLERANCES)
    #: the graph input the output adds back (pre-norm residual blocks): errors are judged
    #: against what the block computes, ``y - x``, not against the identity it carries
    residual: str | None = None
    #: Lengths that stress this mechanism, given its constructor kwargs.
    critical_lengths: Callable[[Mapping[str, Any]], list[int]] = lambda kw: [1, 7, 64]
    #: Config (for stacks) recorded in exported metadata.
    config: StackConfig | None = None
    #: tensor name -> {axis: axis name} of the dynamic axes (default: batch and sequence)
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None
    #: default ONNX opset of an export (bf16 exports take at least 22)
    opset: int = DEFAULT_OPSET
    #: benchmark cases: name -> overrides of ``defaults`` (which are the benchmark size:
    #: dim 768, 12 heads; benchmarks run at batch 1)
    bench: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dynamic_axes is None:
            object.__setattr__(self, "dynamic_axes", default_dynamic_axes(self.inputs, self.outputs))

    @property
    def masked(self) -> bool:
        """Whether the graph takes padding masks (``with_masks``)."""
        return MASK_INPUTS["x"] in self.inputs

    def with_masks(self) -> ModelSpec:
        """This spec with a padding mask after the inputs for each sequence input (x ->
        attention_mask, memory -> memory_mask), on the batch and sequence axes of its input."""
        if self.masked:
            return self
        masks = tuple(MASK_INPUTS[name] for name in self.inputs if name in MASK_INPUTS)
        axes = {**self.dynamic_axes}
        for name in self.inputs:
            if name in MASK_INPUTS:
                axes[MASK_INPUTS[name]] = {a: label for a, label in self.dynamic_axes.get(name, {}).items() if a < 2}
        return replace(self, inputs=(*self.inputs, *masks), dynamic_axes=axes)

    def kwargs(self, overrides: Mapping[str, Any] | None = None, small: bool = False) -> dict[str, Any]:
        """Constructor kwargs: defaults, then ``small`` if asked, then ``overrides``."""
        return {**self.defaults, **(self.small if small else {}), **(overrides or {})}

    def build(self, overrides: Mapping[str, Any] | None = None, small: bool = False) -> nn.Module:
        """Instantiate the module in eval mode."""
        return self.factory(**self.kwargs(overrides, small)).eval()

    def lengths(self, kwargs: Mapping[str, Any]) -> list[int]:
        return sorted(set(self.critical_lengths(kwargs)))

    def trace_length(self, kwargs: Mapping[str, Any]) -> int:
        """The shortest sequence a dynamic export traces at: past every critical length, so
        that chunk, block and group counts derived from L are at least 2 while tracing (a
        count of 1 would be baked into the graph)."""
        return max(self.lengths(kwargs)) + 1

    def example_inputs(
        self,
        model: nn.Module,
        batch: int = 2,
        seq_len: int = 16,
        mem_len: int | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> tuple[torch.Tensor, ...]:
        """Random normal inputs named by ``self.inputs`` (memory length defaults to seq_len // 2 + 3;
        padding masks of a masked spec: :func:`padding_mask`)."""
        dim = _model_dim(model)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, seq_len, dim, generator=gen)
        tensors = {"x": x}
        if "memory" in self.inputs:
            m = mem_len if mem_len is not None else seq_len // 2 + 3
            tensors["memory"] = torch.randn(batch, m, dim, generator=gen)
        for source in list(tensors):
            if MASK_INPUTS[source] in self.inputs:
                tensors[MASK_INPUTS[source]] = padding_mask(batch, tensors[source].shape[1], gen)
        return tuple(tensors[n].to(dtype) if tensors[n].is_floating_point() else tensors[n] for n in self.inputs)


def _local_global_lengths(window: int) -> list[int]:
    """Around the window, its radius and the query block (max(radius, 32))."""
    radius = max(window // 2, 1)
    return _window_lengths(window) + _window_lengths(radius) + _window_lengths(max(radius, 32))


def _model_dim(model: nn.Module) -> int:
    dim = getattr(model, "dim", None)
    if dim is None and hasattr(model, "config"):
        dim = model.config.dim
    if not isinstance(dim, int):
        raise TypeError(f"cannot tell the width of {type(model).__name__}: it has no int attribute 'dim'.")
    return dim


_SMALL = {"dim": 64, "num_heads": 4}

REGISTRY: Mapping[str, ModelSpec] = MappingProxyType(
    {
        s.name: s
        for s in [
            ModelSpec(
                "strided",
                "dilated attention, (i - j) % stride == 0",
                StridedAttention,
                {"dim": 768, "num_heads": 12, "stride": 4},
                _SMALL,
                critical_lengths=lambda kw: _window_lengths(kw.get("stride", 4)) + [37],
                bench={"strided": {}, "strided_causal": {"causal": True}},
            ),
            ModelSpec(
                "local_global",
                "sliding window + global tokens (Longformer)",
                LocalGlobalAttention,
                {"dim": 768, "num_heads": 12, "local_window": 64, "num_global_tokens": 4},
                {**_SMALL, "local_window": 16},
                critical_lengths=lambda kw: _local_global_lengths(kw.get("local_window", 64)),
                bench={"local_global": {"local_window": 128}},
            ),
            ModelSpec(
                "cross_memory",
                "cross-attention to a memory bank",
                CrossMemoryAttention,
                {"dim": 768, "num_heads": 12},
                _SMALL,
                inputs=("x", "memory"),
                critical_lengths=lambda kw: [1, 5, 33],
                bench={"cross_memory": {}},
            ),
            ModelSpec(
                "hierarchical_block",
                "pre-norm block + MLP around local_global attention",
                HierarchicalAttentionBlock,
                {"attention_type": "local_global", "dim": 768, "num_heads": 12, "local_window": 64},
                {**_SMALL, "local_window": 16},
                residual="x",
                critical_lengths=lambda kw: _local_global_lengths(kw.get("local_window", 64)),
                bench={"hierarchical_block": {"local_window": 128}},
            ),
            ModelSpec(
                "performer",
                "FAVOR+ linear attention (causal, chunked prefix sums)",
                PerformerAttention,
                {"dim": 768, "num_heads": 12, "kernel": "softmax", "causal": True},
                {**_SMALL, "chunk_size": 16},
                critical_lengths=lambda kw: _window_lengths(kw.get("chunk_size", 128)),
                bench={"performer": {"causal": False}, "performer_causal": {}},
            ),
            ModelSpec(
                "mamba",
                "Mamba-1 selective SSM, the scan as one custom op",
                MambaLayer,
                {"dim": 768, "state_size": 16},
                {"dim": 64, "state_size": 8},
                critical_lengths=lambda kw: [1, 3, 31, 32, 33, 100],
                bench={"mamba": {}},
            ),
            ModelSpec(
                "linear_block",
                "pre-norm block + MLP around a Mamba layer",
                LinearAttentionBlock,
                {"attention_type": "mamba", "dim": 768},
                {"dim": 64, "state_size": 8},
                residual="x",
                critical_lengths=lambda kw: [1, 31, 33, 70],
                bench={"linear_block": {}},
            ),
        ]
    }
)


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> ModelSpec:
    """The spec registered as ``name``; raises UnknownMechanismError with the valid names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownMechanismError(
            f"unknown mechanism {name!r}", f"valid names are {', '.join(REGISTRY)} (or a config .yaml path)."
        ) from None


def spec_for_config(config: StackConfig | str | Any) -> ModelSpec:
    """A spec for the stack a config describes (inputs x[, memory])."""
    cfg = config if isinstance(config, StackConfig) else load_config(config)
    windows = [b.options.get("stride", b.options.get("local_window", 0)) for b in cfg.blocks]
    return ModelSpec(
        cfg.name,
        f"config stack of {len(cfg.blocks)} blocks",
        lambda: build_stack(cfg),
        inputs=("x", "memory") if cfg.memory else ("x",),
        residual="x",
        critical_lengths=lambda kw: [1, 33] + [n for w in windows if w for n in (w - 1, w + 1)],
        config=cfg,
    )


def spec_for_module(module: nn.Module) -> ModelSpec:
    """The registry spec whose factory built this module's class (or a generic x-only spec)."""
    if isinstance(module, AttentionStack):
        return spec_for_config(module.config)
    for spec in REGISTRY.values():
        if type(module) is spec.factory:
            return spec
    return ModelSpec(type(module).__name__, USER_MODULE, type(module))


#: the summary of a spec made for a user's own module
USER_MODULE = "user module"


def spec_for_user_module(module: nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...],
                         dynamic_axes: Mapping[str, Mapping[int, str]]) -> ModelSpec:
    """A spec for a user's module: its input and output names and the inputs' dynamic axes
    (:mod:`hvlm_export.user_models` derives them from example shapes and the signature)."""
    axes = {name: {int(a): label for a, label in dynamic_axes.get(name, {}).items()} for name in inputs}
    return ModelSpec(type(module).__name__, USER_MODULE, type(module), inputs=tuple(inputs),
                     outputs=tuple(outputs), dynamic_axes=axes)


@dataclass
class ResolvedModel:
    """A module ready to export, with what is needed to rebuild it from the file alone."""

    module: nn.Module
    spec: ModelSpec
    source: dict[str, Any]


def resolve_model(
    model: nn.Module | str | os.PathLike | StackConfig | Mapping[str, Any],
    model_kwargs: Mapping[str, Any] | None = None,
    *,
    small: bool = False,
) -> ResolvedModel:
    """Turn a registry name, config (path / dict / StackConfig) or module into a ResolvedModel."""
    if isinstance(model, nn.Module):
        spec = spec_for_module(model)
        return ResolvedModel(model, spec, {"kind": "module", "class": f"{type(model).__module__}.{type(model).__qualname__}"})
    if is_import_path(model) and model not in REGISTRY:
        kwargs = dict(model_kwargs or {})
        module = build_module(model, kwargs)
        return ResolvedModel(module, spec_for_module(module), {"kind": "callable", "target": model, "kwargs": kwargs})
    if isinstance(model, str) and model in REGISTRY:
        spec = get(model)
        kwargs = spec.kwargs(model_kwargs, small=small)
        try:
            module = spec.factory(**kwargs)
        except (TypeError, ValueError) as err:
            raise ExportError(f"cannot build {model!r} with {kwargs}: {err}") from err
        return ResolvedModel(module, spec, {"kind": "registry", "name": model, "kwargs": kwargs})
    if isinstance(model, (str, os.PathLike, StackConfig, Mapping)):
        if isinstance(model, str) and not model.endswith((".yaml", ".yml")):
            get(model)  # raises UnknownMechanismError listing the valid names
        if model_kwargs:
            raise ExportError("model_kwargs apply to registry names, not to configs", "edit the config instead.")
        spec = spec_for_config(model)
        return ResolvedModel(spec.factory(), spec, {"kind": "config", "config": spec.config.to_dict()})
    raise ExportError(f"cannot export a {type(model).__name__}",
                      "pass an nn.Module, a registry name, a config path or package.module:callable.")
