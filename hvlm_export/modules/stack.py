"""Model configs: a YAML (or dict) description of a stack of blocks, and its builder.

Example (configs/attention/sparse_attention.yaml)::

    name: sparse_attention
    dim: 256
    num_heads: 8
    memory: true            # the model takes a memory input for its cross_memory blocks
    blocks:
      - {attention_type: strided, stride: 4}
      - {attention_type: local_global, local_window: 64, num_global_tokens: 4}
      - {attention_type: cross_memory}

Every block is a HierarchicalAttentionBlock (strided, local_global, cross_memory) or a
LinearAttentionBlock (performer, mamba); extra keys of a block go to its mechanism.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hvlm_export.errors import ConfigError
from hvlm_export.modules._streaming import StateSpec, Streamable, prefixed
from hvlm_export.modules.blocks import (
    LINEAR_TYPES,
    SPARSE_TYPES,
    HierarchicalAttentionBlock,
    LinearAttentionBlock,
)

__all__ = ["BlockConfig", "StackConfig", "AttentionStack", "load_config", "build_stack"]

_BLOCK_TYPES = {**{k: HierarchicalAttentionBlock for k in SPARSE_TYPES}, **{k: LinearAttentionBlock for k in LINEAR_TYPES}}


@dataclass
class BlockConfig:
    """One block: its mechanism and the mechanism's keyword arguments."""

    attention_type: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.attention_type not in _BLOCK_TYPES:
            raise ConfigError(
                f"unknown attention_type {self.attention_type!r}",
                f"valid choices are {', '.join(_BLOCK_TYPES)}.",
            )


@dataclass
class StackConfig:
    """A stack of pre-norm blocks applied in order, ``x = block(x[, memory])``."""

    name: str
    blocks: list[BlockConfig]
    dim: int = 768
    num_heads: int = 12
    mlp_ratio: float = 4.0
    memory: bool = False

    def __post_init__(self) -> None:
        for fname in ("dim", "num_heads"):
            value = getattr(self, fname)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"field {fname!r} must be a positive int, got {value!r}")
        if not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise ConfigError(f"field 'mlp_ratio' must be a positive number, got {self.mlp_ratio!r}")
        if not self.blocks:
            raise ConfigError("field 'blocks' must list at least one block")
        if not isinstance(self.memory, bool):
            raise ConfigError(f"field 'memory' must be true or false, got {self.memory!r}")
        cross = [i for i, b in enumerate(self.blocks) if b.attention_type == "cross_memory"]
        if self.memory and not cross:
            raise ConfigError("field 'memory' is true but no block has attention_type 'cross_memory'")
        if cross and not self.memory:
            raise ConfigError(
                f"blocks {cross} are cross_memory but field 'memory' is false: they would attend to the sequence "
                "itself (self-attention), not to a memory",
                "set 'memory: true' (the model then takes a memory input), or use attention_type 'local_global' "
                "or 'strided' for self-attention.")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["blocks"] = [{"attention_type": b.attention_type, **b.options} for b in self.blocks]
        return data


def _parse_blocks(raw: Any) -> list[BlockConfig]:
    if not isinstance(raw, list):
        raise ConfigError(f"field 'blocks' must be a list, got {type(raw).__name__}")
    blocks = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "attention_type" not in item:
            raise ConfigError(f"field 'blocks[{i}]' must be a mapping with an 'attention_type' key, got {item!r}")
        opts = {k: v for k, v in item.items() if k != "attention_type"}
        try:
            blocks.append(BlockConfig(item["attention_type"], opts))
        except ConfigError as err:
            raise ConfigError(f"field 'blocks[{i}].attention_type': {err.message}", err.note) from err
    return blocks


def load_config(source: str | Path | dict[str, Any]) -> StackConfig:
    """Parse a YAML file path or a dict into a validated :class:`StackConfig`."""
    if isinstance(source, dict):
        data = source
    else:
        import yaml

        path = Path(source)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"config file {str(path)!r} does not exist") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    allowed = {f.name for f in dataclasses.fields(StackConfig)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown}", f"valid fields are {sorted(allowed)}.")
    if "name" not in data or "blocks" not in data:
        raise ConfigError("a config needs the fields 'name' and 'blocks'")
    fields = dict(data, blocks=_parse_blocks(data["blocks"]))
    return StackConfig(**fields)


class AttentionStack(Streamable):
    """The model a :class:`StackConfig` describes."""

    def __init__(self, config: StackConfig) -> None:
        super().__init__()
        self.config = config
        layers = []
        for i, block in enumerate(config.blocks):
            cls = _BLOCK_TYPES[block.attention_type]
            try:
                layers.append(
                    cls(
                        block.attention_type,
                        dim=config.dim,
                        num_heads=config.num_heads,
                        mlp_ratio=config.mlp_ratio,
                        **block.options,
                    )
                )
            except (TypeError, ValueError) as err:
                raise ConfigError(f"field 'blocks[{i}]' ({block.attention_type}): {err}") from err
        self.blocks = nn.ModuleList(layers)

    def streaming_error(self) -> str | None:
        reasons = [f"block {i} ({b.attention_type}): {r}" for i, b in enumerate(self.blocks)
                   if (r := b.streaming_error()) is not None]
        return "; ".join(reasons) or None

    def state_specs(self) -> list[StateSpec]:
        return [spec for i, b in enumerate(self.blocks) for spec in prefixed(f"blocks.{i}", b.state_specs())]

    def _step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        new_state = {}
        for i, block in enumerate(self.blocks):
            prefix = f"blocks.{i}."
            inner = {n.removeprefix(prefix): t for n, t in state.items() if n.startswith(prefix)}
            x, inner = block._step(x, inner)
            new_state.update({prefix + n: t for n, t in inner.items()})
        return x, new_state

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, E); memory: (B, M, E) for the cross_memory blocks. Returns (B, L, E).
        attention_mask (B, L) / memory_mask (B, M): padding masks (1 = real token), passed to
        every block; padded positions output 0."""
        for block in self.blocks:
            x = block(x, memory, attention_mask, memory_mask) if block.uses_memory else block(x, None, attention_mask)
        return x


def build_stack(config: StackConfig | str | Path | dict[str, Any]) -> AttentionStack:
    """Build the stack of a config object, YAML path or dict."""
    if not isinstance(config, StackConfig):
        config = load_config(config)
    return AttentionStack(config)
