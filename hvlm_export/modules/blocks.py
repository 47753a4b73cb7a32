"""Pre-norm transformer blocks around the mechanisms.

    x = x + attn(norm1(x)[, memory])
    x = x + mlp(norm2(x))            mlp = Linear(E, r E) -> GELU -> Linear(r E, E)
"""

from __future__ import annotations

import torch
from torch import nn

from hvlm_export.modules._attention import check_dropout, check_mask, check_positive_int, check_sequence, zero_padding
from hvlm_export.modules._streaming import StateSpec, Streamable, prefixed
from hvlm_export.modules.mamba import MambaLayer
from hvlm_export.modules.performer import PerformerAttention
from hvlm_export.modules.cross_memory import CrossMemoryAttention
from hvlm_export.modules.sparse import LocalGlobalAttention, StridedAttention

__all__ = ["HierarchicalAttentionBlock", "LinearAttentionBlock", "SPARSE_TYPES", "LINEAR_TYPES"]

SPARSE_TYPES = {
    "strided": StridedAttention,
    "local_global": LocalGlobalAttention,
    "cross_memory": CrossMemoryAttention,
}
LINEAR_TYPES = {"performer": PerformerAttention, "mamba": MambaLayer}


class _PreNormBlock(Streamable):
    _types: dict[str, type[nn.Module]] = {}

    def __init__(self, attention_type: str, dim: int, mlp_ratio: float, attn_kwargs: dict, *, device, dtype):
        super().__init__()
        if attention_type not in self._types:
            raise ValueError(
                f"Unknown attention_type {attention_type!r} for {type(self).__name__}.\n"
                f"Note: valid choices are {', '.join(self._types)}."
            )
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}.")
        check_positive_int("dim", dim)
        self.attention_type = attention_type
        self.dim = dim
        dd = {"device": device, "dtype": dtype}
        cls = self._types[attention_type]
        try:
            self.attn = cls(dim=dim, **attn_kwargs, **dd)
        except TypeError as err:
            raise TypeError(f"{cls.__name__} rejected the keyword arguments {sorted(attn_kwargs)}: {err}") from err
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden, **dd), nn.GELU(), nn.Linear(hidden, dim, **dd))

    @property
    def uses_memory(self) -> bool:
        return self.attention_type == "cross_memory"

    def streaming_error(self) -> str | None:
        return self.attn.streaming_error()

    def state_specs(self) -> list[StateSpec]:
        return prefixed("attn", self.attn.state_specs())

    def _step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inner = {name.removeprefix("attn."): t for name, t in state.items()}
        out, inner = self.attn._step(self.norm1(x), inner)
        x = x + out
        return x + self.mlp(self.norm2(x)), {f"attn.{name}": t for name, t in inner.items()}

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, E); memory: (B, M, E), only for 'cross_memory'. Returns (B, L, E).

        attention_mask (B, L) / memory_mask (B, M): 1 = real token, right padding; padded
        positions output 0 and never change the real ones."""
        check_sequence(x, self.dim)
        for name, given in (("memory", memory), ("memory_mask", memory_mask)):
            if given is not None and not self.uses_memory:
                raise ValueError(
                    f"{name} was given to a {self.attention_type!r} block, which does not use it (no memory).\n"
                    "Note: only attention_type='cross_memory' attends to a memory."
                )
        mask = None if attention_mask is None else check_mask(attention_mask, x)
        h = self.norm1(x)
        x = x + (self.attn(h, memory, mask, memory_mask) if self.uses_memory else self.attn(h, mask))
        return zero_padding(x + self.mlp(self.norm2(x)), mask)


class HierarchicalAttentionBlock(_PreNormBlock):
    """Pre-norm block around a sparse mechanism.

    Args:
        attention_type: 'strided', 'local_global' or 'cross_memory'.
        dim: model width E (default 768).
        num_heads: heads H (default 12).
        mlp_ratio: MLP hidden width / E (default 4.0).
        dropout: attention dropout, training only (default 0.0).
        **attention_kwargs: passed to the mechanism (e.g. stride=4, local_window=64).
    """

    _types = SPARSE_TYPES

    def __init__(
        self,
        attention_type: str,
        dim: int = 768,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        *,
        device=None,
        dtype=None,
        **attention_kwargs,
    ) -> None:
        check_dropout(dropout)
        kwargs = {"num_heads": num_heads, "dropout": dropout, **attention_kwargs}
        super().__init__(attention_type, dim, mlp_ratio, kwargs, device=device, dtype=dtype)


class LinearAttentionBlock(_PreNormBlock):
    """Pre-norm block around a linear-time mechanism.

    Args:
        attention_type: 'performer' or 'mamba'.
        dim: model width E (default 768).
        num_heads: heads H for 'performer' (default 12; unused by 'mamba').
        mlp_ratio: MLP hidden width / E (default 4.0).
        **attention_kwargs: passed to the mechanism (e.g. kernel='relu', state_size=16).
    """

    _types = LINEAR_TYPES

    def __init__(
        self,
        attention_type: str,
        dim: int = 768,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        *,
        device=None,
        dtype=None,
        **attention_kwargs,
    ) -> None:
        kwargs = dict(attention_kwargs)
        if attention_type == "performer":
            kwargs["num_heads"] = num_heads
        super().__init__(attention_type, dim, mlp_ratio, kwargs, device=device, dtype=dtype)
