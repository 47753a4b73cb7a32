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
    a source has changed since the last call (module docstring). Nothing is kept, and the value
    is computed in the call, where keeping it would be wrong: while anything traces, transforms
    or captures the call (``hvlm_export.modules._attention.tracing``: a graph must compute it
    itself), when a source records autograd (the value must carry its gradient), and for
    inference tensors (made under ``torch.inference_mode``: no version counter to watch)."""

    def __init__(self, compute: Callable[..., object]) -> None:
        self._compute = compute
        self._state: tuple[tuple[torch.Tensor, ...], tuple[int, ...], object] = ((), (), None)

    def invalidate(self) -> None:
        """Drop the kept value (and the storage views it holds)."""
        self._state = ((), (), None)

    @staticmethod
    def _fresh(sources: tuple[torch.Tensor, ...], held: tuple[torch.Tensor, ...], versions: tuple[int, ...]) -> bool:
        if len(sources) != len(held):
            return False
        for src, kept, version in zip(sources, held, versions, strict=True):
            if (src.data_ptr() != kept.data_ptr() or src._version != version or src.dtype != kept.dtype
                    or src.device != kept.device or src.shape != kept.shape or src.stride() != kept.stride()):
                return False
        return True

    def __call__(self, *sources: torch.Tensor):
        from hvlm_export.modules._attention import tracing  # not at the top: _attention imports this module

        if torch.is_grad_enabled() and any(src.requires_grad for src in sources):
            return self._compute(*sources)
        if tracing() or any(src.is_inference() for src in sources):
            with torch.no_grad():
                return self._compute(*sources)
        held, versions, value = self._state  # one read: a concurrent refresh replaces the whole state
        if not self._fresh(sources, held, versions):
            with torch.no_grad():
                value = self._compute(*sources)
            # views keep the storage alive; the state is replaced in one assignment
            self._state = (tuple(src.detach() for src in sources), tuple(src._version for src in sources), value)
        return value
