"""The JIT plugin's device work: the hvlm scan op (Triton on CUDA) run on torch views of
TensorRT's buffers. The AOT route embeds the Triton kernel itself and needs none of this."""

from __future__ import annotations

import torch

import hvlm_export.ops  # noqa: F401  (registers torch.ops.hvlm.selective_scan and its CUDA kernel)

__all__ = ["run_scan"]


def run_scan(inputs: list[torch.Tensor], outputs: list[torch.Tensor], delta_softplus: bool, stream: int) -> None:
    """inputs u, delta, A, B, C, D, delta_bias, initial_state; outputs y, last_state; CUDA tensors."""
    u, delta, A, B, C, D, bias, h0 = inputs
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        y, state = torch.ops.hvlm.selective_scan(u, delta, A, B, C, D, None, bias, bool(delta_softplus), h0)
        outputs[0].copy_(y)
        outputs[1].copy_(state)
