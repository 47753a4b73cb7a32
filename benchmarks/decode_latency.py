"""Per-token decode latency of the streaming layers at two positions (issue: decode cost).

For each causal layer (benchmark size: dim 768, 12 heads, B = 1): prefill a prompt with one
``step`` to reach position P, then time 1-token ``step`` calls (median of --repeats). A
fixed-size state (Mamba, Performer, local/global) costs the same at position 100 and 10,000;
strided attention keeps a growing key/value cache and is shown for contrast.

    python benchmarks/decode_latency.py --device cuda --dtype fp16     # eager CUDA
    python benchmarks/decode_latency.py --device cpu --dtype fp32      # eager CPU
    python benchmarks/decode_latency.py --onnx                         # ONNX Runtime CPU step graphs

``--onnx`` exports each layer as a step graph (``mode="step"``) and times ``runtime.Stream``:
the prompt is fed as one chunk, then 1-token feeds are timed on copies of that state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.modules import (  # noqa: E402
    LocalGlobalAttention,
    MambaLayer,
    PerformerAttention,
    StridedAttention,
    cast_module,
)

LAYERS = {
    "mamba": lambda: MambaLayer(768, 16),
    "performer_causal": lambda: PerformerAttention(768, 12, causal=True),
    "local_global_causal": lambda: LocalGlobalAttention(768, 12, local_window=128, causal=True),
    "strided_causal": lambda: StridedAttention(768, 12, stride=4, causal=True),
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def decode_ms(layer, position: int, device: str, dtype: torch.dtype, repeats: int) -> float:
    state = layer.init_state(1)
    if position:
        _, state = layer.step(torch.randn(1, position, 768, device=device, dtype=dtype), state)
    token = torch.randn(1, 1, 768, device=device, dtype=dtype)
    for _ in range(3):  # warm-up; the state is not advanced, every timed step sees `position`
        layer.step(token, state)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        layer.step(token, state)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def onnx_decode_ms(layer, position: int, repeats: int, workdir: Path) -> float:
    """The same measurement through an exported step graph and ONNX Runtime (CPU, fp32)."""
    import numpy as np

    from hvlm_export import runtime
    from hvlm_export.exporters.onnx_export import export_onnx

    path = workdir / f"{type(layer).__name__}-{id(layer)}.onnx"
    if not path.exists():
        export_onnx(layer, path, mode="step")
    stream = runtime.Stream(runtime.load(path, providers=["CPUExecutionProvider"]), batch_size=1)
    rng = np.random.default_rng(0)
    if position:
        stream.feed(rng.standard_normal((1, position, 768)).astype(np.float32))
    prefix_state, token = stream.state, rng.standard_normal((1, 1, 768)).astype(np.float32)
    times = []
    for i in range(repeats + 3):
        stream._state = dict(prefix_state)  # every timed step sees `position`
        t0 = time.perf_counter()
        stream.feed(token)
        if i >= 3:  # warm-up
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    p.add_argument("--positions", type=int, nargs="+", default=[100, 10000])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--onnx", action="store_true", help="time exported step graphs in ONNX Runtime (CPU, fp32)")
    p.add_argument("--out")
    args = p.parse_args()
    if args.onnx and (args.device, args.dtype) != ("cpu", "fp32"):
        p.error("--onnx runs ONNX Runtime on the CPU in fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    rows = []
    for name, make in LAYERS.items():
        torch.manual_seed(0)
        layer = cast_module(make().to(args.device), dtype).eval()
        # the far position first, so warm-up effects cannot favour it
        if args.onnx:
            with tempfile.TemporaryDirectory() as tmp:
                times = {pos: onnx_decode_ms(layer, pos, args.repeats, Path(tmp)) for pos in reversed(args.positions)}
        else:
            times = {pos: decode_ms(layer, pos, args.device, dtype, args.repeats) for pos in reversed(args.positions)}
        rows.append({"name": name, **{f"ms_at_{pos}": t for pos, t in times.items()},
                     "ratio_last_first": times[args.positions[-1]] / times[args.positions[0]]})
        print(name, {k: round(v, 4) for k, v in rows[-1].items() if k != "name"}, flush=True)
    if args.out:
        backend = "onnxruntime" if args.onnx else "eager"
        Path(args.out).write_text(json.dumps({"device": args.device, "dtype": args.dtype, "backend": backend,
                                              "rows": rows}, indent=2))
    print("| layer | " + " | ".join(f"ms at {p}" for p in args.positions) + " | ratio |")
    print("|---|" + "---|" * (len(args.positions) + 1))
    for r in rows:
        print(f"| {r['name']} | " + " | ".join(f"{r[f'ms_at_{p}']:.3f}" for p in args.positions)
              + f" | {r['ratio_last_first']:.2f} |")


if __name__ == "__main__":
    main()
