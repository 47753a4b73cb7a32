"""Modules a user might bring (imported by path in tests: ``tests.user_modules:...``)."""

from __future__ import annotations

import torch
from torch import nn


class Mixer(nn.Module):
    """Two inputs, no ``dim`` attribute: x (B, L, E) attends to memory (B, M, E)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(memory).chunk(2, dim=-1)
        attn = torch.softmax(self.q(x) @ k.transpose(1, 2) / k.shape[-1] ** 0.5, dim=-1)
        return self.out(attn @ v)


class TwoHeads(nn.Module):
    """A tuple of two outputs of different shapes."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.proj(x))
        return h, self.score(h).squeeze(-1)


def two_heads(dim: int = 16) -> TwoHeads:
    """A factory function, as a user's code base often has one."""
    return TwoHeads(dim)


class DictOut(TwoHeads):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        h, s = super().forward(x)
        return {"h": h, "s": s}


class DataDependent(TwoHeads):
    """Python control flow on tensor values: torch.export cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if float(x.sum()) > 0:
            return self.proj(x)
        return x


not_a_module = 42
