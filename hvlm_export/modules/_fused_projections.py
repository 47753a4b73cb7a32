"""One GEMM for the q, k and v projections of self-attention (opt-in, inference).

Three projections of the same input are three GEMM launches; on a GPU at lengths where a layer
is bound by its host's launch work (8K tokens on the H200, docs/BENCHMARKS.md) each launch
costs about as much host time as its GEMM takes on the device. ``fuse_projections(model)``
makes every attention layer in ``model`` project q, k and v with one GEMM of their stacked
weights, as diffusers' ``fuse_qkv_projections`` does.

The stacked weight is a copy (hvlm_export.modules._derived.Derived), rebuilt when any of the
three layers' parameters is replaced, moved or changed in place (``load_state_dict``, optimizer
steps, ``.to()``, ``torch.no_grad()`` writes). Writes through ``.data`` go unseen: after
``layer.q_proj.weight.data.copy_(w)``, call ``fuse_projections`` again. Replacing a
projection module (an adapter wrapping it, say) ends the fusion: the layer goes back to its
three projections. Only plain ``nn.Linear`` projections fuse. Calls that record autograd, and
torch.compile / torch.export / torch.jit tracing, keep the three projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hvlm_export.modules._derived import Derived

__all__ = ["FusedProjections", "fuse_projections", "unfuse_projections"]


class FusedProjections:
    """q, k, v = this(x): the three Linear layers' outputs from one GEMM (views of one buffer)."""

    def __init__(self, *linears: nn.Linear) -> None:
        for lin in linears:
            if type(lin) is not nn.Linear:  # e.g. a LoRA or quantized wrapper: not its weight's GEMM
                raise ValueError(f"cannot fuse a {type(lin).__name__} projection: only plain nn.Linear layers "
                                 "are their weight's GEMM.")
        self.linears = linears
        self.sizes = [lin.out_features for lin in linears]
        self._stacked = Derived(self._stack)

    def __setstate__(self, state: dict) -> None:
        """Layers pickled before the Derived cache kept their stacked copy in _key / weight / bias."""
        for old in ("_key", "weight", "bias"):
            state.pop(old, None)
        self.__dict__.update(state)
        if "_stacked" not in state:
            self._stacked = Derived(self._stack)

    def _stack(self, *_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = torch.cat([lin.weight for lin in self.linears])
        bias = None if all(lin.bias is None for lin in self.linears) else torch.cat(
            [lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in self.linears])
        return weight, bias

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params = [p for lin in self.linears for p in (lin.weight, lin.bias) if p is not None]
        weight, bias = self._stacked(*params)
        return F.linear(x, weight, bias).split(self.sizes, dim=-1)


def fuse_projections(model: nn.Module) -> int:
    """Fuse q / k / v in every attention layer of ``model`` whose projections are plain
    ``nn.Linear`` layers (see the module docstring); returns how many layers now project with
    one GEMM (the others keep their three projections)."""
    from hvlm_export.modules._attention import MultiHeadProjections

    fused = 0
    for layer in model.modules():
        if isinstance(layer, MultiHeadProjections):
            try:
                layer.fuse_projections()
            except ValueError:
                continue
            fused += 1
    return fused


def unfuse_projections(model: nn.Module) -> None:
    """Undo :func:`fuse_projections` (drops the stacked copies)."""
    from hvlm_export.modules._attention import MultiHeadProjections

    for m in model.modules():
        if isinstance(m, MultiHeadProjections):
            m.unfuse_projections()
