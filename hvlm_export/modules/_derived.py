"""Tensors derived from parameters (a stacked weight, a cast or exponentiated parameter), kept
between inference calls while the parameters are unchanged.

At the lengths where a layer is bound by its host's launch work (8K tokens on the project's
H200, docs/BENCHMARKS.md) every small op that recomputes the same tensor from unchanged
parameters costs a launch per call. ``Derived`` computes such a tensor once and serves it
until one of its source tensors changes:

* in place through autograd-visible ops (``load_state_dict``, optimizer steps,
  ``torch.no_grad()`` writes): the tensor's version counter moves;
* to other storage (``.to()``, ``.half()``, a replaced parameter, ``param.data = t``): its
  data pointer, dtype, shape or strides move. The cache holds a view of every source's
  storage, so that storage stays alive while it is cached and no new tensor can be given
  its address: equal pointers mean the same live memory.

Writes through ``.data`` (``param.data.copy_(t)``) move neither and go unseen: call
``invalidate()`` (or the owner's refresh, e.g. ``fuse_projections``) after them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["Derived"]


class Derived:
    """``value = derived(*sources)``: ``compute(*sources)`` (under no_grad), recomputed only when
    a source has changed since the last call (module docstring)."""

    def __init__(self, compute: Callable[..., object]) -> None:
        self._compute = compute
        self._held: tuple[torch.Tensor, ...] = ()
        self._versions: tuple[int, ...] = ()
        self._value: object = None

    def invalidate(self) -> None:
        """Drop the kept value (and the storage views it holds)."""
        self._held, self._versions, self._value = (), (), None

    def _fresh(self, sources: tuple[torch.Tensor, ...]) -> bool:
        if len(sources) != len(self._held):
            return False
        for src, held, version in zip(sources, self._held, self._versions, strict=True):
            if (src.data_ptr() != held.data_ptr() or src._version != version or src.dtype != held.dtype
                    or src.device != held.device or src.shape != held.shape or src.stride() != held.stride()):
                return False
        return True

    def __call__(self, *sources: torch.Tensor):
        if not self._fresh(sources):
            with torch.no_grad():
                value = self._compute(*sources)
            self._held = tuple(src.detach() for src in sources)  # a view: keeps the storage alive
            self._versions = tuple(src._version for src in sources)
            self._value = value
        return self._value
