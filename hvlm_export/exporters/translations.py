"""Custom ONNX translations used by the exporter (torch op -> ONNX ops, via onnxscript).

* ``hvlm::selective_scan`` -> one ``hvlm::SelectiveScan`` node (+ the z gate in float32).
* for fp16 / bf16 graphs, ``aten::scaled_dot_product_attention`` -> MatMul, then Softmax in
  float32 (the precision policy: exp and softmax statistics stay float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from onnx import helper as onnx_helper
from onnxscript import opset18 as op
from onnxscript.values import Opset

from hvlm_export.artifacts import SCAN_DOMAIN, SCAN_PLUGIN_VERSION

__all__ = ["translation_table"]

_hvlm = Opset(SCAN_DOMAIN, 1)
_FLOAT = 1  # onnx.TensorProto.FLOAT
_BOOL = 9  # onnx.TensorProto.BOOL
_ONE = onnx_helper.make_tensor("one", _FLOAT, [1], [1.0])


def _selective_scan(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus: bool = False):
    y, state = _hvlm.SelectiveScan(
        u,
        delta,
        A,
        B,
        C,
        D,
        delta_bias,
        delta_softplus=int(delta_softplus),
        plugin_namespace=SCAN_DOMAIN,
        plugin_version=SCAN_PLUGIN_VERSION,
    )
    if z is not None:  # gate in float32, as hvlm::selective_scan does, then cast back
        zf = op.Cast(z, to=_FLOAT)
        y = op.CastLike(op.Mul(op.Cast(y, to=_FLOAT), op.Mul(zf, op.Sigmoid(zf))), u)
    return y, state


def _sdpa_fp32_softmax(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                       scale: float | None = None, enable_gqa: bool = False):
    """Scaled dot-product attention whose softmax runs in float32 (eval only: no dropout).

    ``is_causal`` masks key j > query i with a lower-triangular (Lq, Lk) mask built from the
    scores' shape (as torch's own translation does)."""
    if enable_gqa:
        raise NotImplementedError("the fp32-softmax SDPA translation does not support enable_gqa")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    scores = op.Mul(op.Cast(op.MatMul(query, op.Transpose(key, perm=[0, 1, 3, 2])), to=_FLOAT),
                    op.Constant(value_float=scale))
    if attn_mask is not None:
        scores = op.Where(attn_mask, scores, op.Constant(value_float=float("-inf")))
    if is_causal:
        square = op.Slice(op.Shape(scores), op.Constant(value_ints=[-2]), op.Constant(value_ints=[2**62]))
        lower = op.Cast(op.Trilu(op.ConstantOfShape(square, value=_ONE), upper=0), to=_BOOL)
        scores = op.Where(lower, scores, op.Constant(value_float=float("-inf")))
    probs = op.CastLike(op.Softmax(scores, axis=-1), query)
    return op.MatMul(probs, value)


def translation_table(precision: str) -> dict[Callable, Callable]:
    """The custom_translation_table for torch.onnx.export at ``precision``."""
    import hvlm_export.ops  # noqa: F401  (registers torch.ops.hvlm)

    table: dict[Callable, Callable] = {torch.ops.hvlm.selective_scan.default: _selective_scan}
    if precision != "fp32":
        table[torch.ops.aten.scaled_dot_product_attention.default] = _sdpa_fp32_softmax
    return table
