"""The device work of the JIT plugin routes: the hvlm scan op on torch views of TRT buffers."""

from __future__ import annotations

import torch

import hvlm_export.ops  # noqa: F401  (registers torch.ops.hvlm.selective_scan and its CUDA kernel)

__all__ = ["run_scan", "device_tensor"]

_TYPESTR = {"float32": "<f4", "float16": "<f2"}


class _CudaArray:
    """A raw device pointer with ``__cuda_array_interface__`` (v3), for torch.as_tensor."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, False), "version": 3}


def device_tensor(ptr: int, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """A torch view of TensorRT's device buffer (no copy)."""
    if dtype == "bfloat16":  # no typestr for bf16: view the bytes as int16, reinterpret
        return torch.as_tensor(_CudaArray(ptr, shape, "<i2"), device="cuda").view(torch.bfloat16)
    return torch.as_tensor(_CudaArray(ptr, shape, _TYPESTR[dtype]), device="cuda")


def run_scan(inputs: list[torch.Tensor], outputs: list[torch.Tensor], delta_softplus: bool, stream: int) -> None:
    """inputs u, delta, A, B, C, D, delta_bias; outputs y, last_state; all CUDA tensors."""
    u, delta, A, B, C, D, bias = inputs
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        y, state = torch.ops.hvlm.selective_scan(u, delta, A, B, C, D, None, bias, bool(delta_softplus))
        outputs[0].copy_(y)
        outputs[1].copy_(state)
