"""Block attention core on the CPU: ONNX Runtime against PyTorch, at local/global's block shapes.

local/global's export runs each block's attention as MatMul + mask + Softmax + MatMul over
(B nb, H, w, span) scores (dim 256, 8 heads, L 2048: 64 blocks of 32 queries, 100 keys). This
times that core alone in ONNX Runtime (the standard-op graph, and opset 23's Attention op)
and in PyTorch (F.scaled_dot_product_attention, and the same unfused math), same inputs, the
median of ``--runs`` calls.

Usage: python benchmarks/ort_attention_core.py [--blocks 64] [--heads 8] [--queries 32] [--keys 100] [--threads 2]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from ort_profile import median_ms  # benchmarks/ is on sys.path when run as a script


def _model(shape_q, shape_kv, shape_m, scale: float, attention_op: bool):
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(n, f32, s) for n, s in (("q", shape_q), ("k", shape_kv), ("v", shape_kv))]
    inputs.append(helper.make_tensor_value_info("m", TensorProto.BOOL, shape_m))
    output = helper.make_tensor_value_info("y", f32, shape_q)
    if attention_op:
        nodes, inits, opset = [helper.make_node("Attention", ["q", "k", "v", "m"], ["y"], scale=scale)], [], 23
    else:
        nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                 helper.make_node("MatMul", ["q", "kt"], ["s0"]), helper.make_node("Mul", ["s0", "scale"], ["s1"]),
                 helper.make_node("Where", ["m", "zero", "ninf"], ["bias"]), helper.make_node("Add", ["s1", "bias"], ["s2"]),
                 helper.make_node("Softmax", ["s2"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
        inits = [helper.make_tensor(n, f32, [], [v]) for n, v in (("scale", scale), ("zero", 0.0), ("ninf", -np.inf))]
        opset = 20
    graph = helper.make_graph(nodes, "attention_core", inputs, [output], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("blocks", 64), ("heads", 8), ("queries", 32), ("keys", 100), ("head-dim", 32),
                          ("threads", 2), ("runs", 30)):
        parser.add_argument(f"--{name}", type=int, default=default)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    shape_q, shape_kv, shape_m = [a.blocks, a.heads, a.queries, a.head_dim], [a.blocks, a.heads, a.keys, a.head_dim], \
        [a.blocks, 1, a.queries, a.keys]
    mask = rng.random(shape_m) < 0.7
    mask[..., 0] = True  # no empty row
    feeds = {"q": rng.standard_normal(shape_q, dtype=np.float32), "k": rng.standard_normal(shape_kv, dtype=np.float32),
             "v": rng.standard_normal(shape_kv, dtype=np.float32), "m": mask}
    scale = a.head_dim ** -0.5
    q, k, v, m = (torch.from_numpy(feeds[n]) for n in "qkvm")
    bias = torch.zeros(m.shape).masked_fill(~m, float("-inf"))
    with torch.no_grad():
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale).numpy()
        rows = {"torch SDPA": median_ms(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale), a.runs),
                "torch unfused": median_ms(lambda: torch.softmax(q @ k.transpose(-1, -2) * scale + bias, -1) @ v, a.runs)}
    options = ort.SessionOptions()
    options.intra_op_num_threads = a.threads
    for name, attention_op in (("ORT MatMul/Softmax", False), ("ORT Attention (opset 23)", True)):
        session = ort.InferenceSession(_model(shape_q, shape_kv, shape_m, scale, attention_op).SerializeToString(),
                                       options, providers=["CPUExecutionProvider"])
        assert np.allclose(session.run(None, feeds)[0], want, atol=1e-4), name
        rows[name] = median_ms(lambda session=session: session.run(None, feeds), a.runs)
    print(f"scores ({a.blocks}, {a.heads}, {a.queries}, {a.keys}), head dim {a.head_dim}, {a.threads} threads:")
    for name, ms in rows.items():
        print(f"  {name:26} {ms:7.2f} ms  ({ms / rows['torch SDPA']:.2f}x torch SDPA)")


if __name__ == "__main__":
    main()
