"""Runnable tour of the seven mechanisms on the CPU: build, run, export one, validate it.

    python examples/attention_examples.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

import hvlm_export as hx
from hvlm_export.modules import (
    CrossMemoryAttention,
    HierarchicalAttentionBlock,
    LinearAttentionBlock,
    LocalGlobalAttention,
    MambaLayer,
    PerformerAttention,
    StridedAttention,
)


def timed(name: str, module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        start = time.perf_counter()
        out = module(*inputs)
        ms = (time.perf_counter() - start) * 1e3
    print(f"{name:<34} in {tuple(inputs[0].shape)} -> out {tuple(out.shape)}  {ms:7.1f} ms")
    return out


def main() -> None:
    torch.manual_seed(0)
    dim, heads = 256, 8
    x = torch.randn(2, 1024, dim)
    memory = torch.randn(2, 64, dim)

    print("== the seven mechanisms ==")
    timed("StridedAttention(stride=4)", StridedAttention(dim, heads, stride=4).eval(), x)
    timed("LocalGlobalAttention(64, 4 global)", LocalGlobalAttention(dim, heads, local_window=64).eval(), x)
    cross = CrossMemoryAttention(dim, heads).eval()
    timed("CrossMemoryAttention(x, memory)", cross, x, memory)
    fused = cross.fuse_with_memory(x, memory, fusion_ratio=0.3)
    print(f"{'fuse_with_memory(ratio=0.3)':<34} out {tuple(fused.shape)}")
    timed("HierarchicalAttentionBlock(strided)", HierarchicalAttentionBlock("strided", dim, heads, stride=4).eval(), x)
    timed("PerformerAttention(softmax, causal)", PerformerAttention(dim, heads, causal=True).eval(), x)
    timed("MambaLayer(state_size=16)", MambaLayer(dim, state_size=16).eval(), x)
    timed("LinearAttentionBlock(mamba)", LinearAttentionBlock("mamba", dim).eval(), x)

    print("\n== the seed's stacking example ==")
    layers = nn.ModuleList([
        HierarchicalAttentionBlock(attention_type="strided", dim=dim, num_heads=heads, stride=4),
        HierarchicalAttentionBlock(attention_type="local_global", dim=dim, num_heads=heads),
        HierarchicalAttentionBlock(attention_type="cross_memory", dim=dim, num_heads=heads),
    ]).eval()
    y = x
    with torch.no_grad():
        for layer in layers:
            y = layer(y)
    print(f"stack of 3 blocks: {tuple(y.shape)}")

    print("\n== export + validate (ONNX Runtime vs eager) ==")
    with tempfile.TemporaryDirectory() as tmp:
        path = hx.export_onnx("mamba", Path(tmp) / "mamba.onnx", model_kwargs={"dim": 128, "state_size": 16})
        report = hx.validate(path)
        print(report.summary())
        print("worst:", report.worst())
        session = hx.runtime.load(path)
        out = session.run({"x": torch.randn(1, 3000, 128).numpy()})["y"]
        print(f"ONNX Runtime at L=3000 (exported at L=48): {out.shape}")


if __name__ == "__main__":
    main()
