"""Custom ONNX translations used by the exporter (torch op -> ONNX ops, via onnxscript).

* ``hvlm::selective_scan`` -> one ``hvlm::SelectiveScan`` node (+ the z gate in float32).
* ``aten::scaled_dot_product_attention`` -> MatMul, a boolean mask applied with one Where,
  Softmax in float32 (the precision policy: exp and softmax statistics stay float32), MatMul.
  Unlike torch's own translation it adds no NaN guard over the scores (IsNaN + Where, a third
  of ONNX Runtime's time in local/global attention): every attention of ours gives each query
  row at least one key.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import onnx_ir as ir
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
_ZERO = onnx_helper.make_tensor("zero", _FLOAT, [1], [0.0])


def _selective_scan(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus: bool = False,
                    initial_state=None):
    if initial_state is None:  # zeros (B, D, N): the node always takes a state (contract v2)
        bd = op.Slice(op.Shape(u), op.Constant(value_ints=[0]), op.Constant(value_ints=[2]))
        n = op.Slice(op.Shape(A), op.Constant(value_ints=[1]), op.Constant(value_ints=[2]))
        initial_state = op.ConstantOfShape(op.Concat(bd, n, axis=0), value=_ZERO)
    y, state = _hvlm.SelectiveScan(
        u,
        delta,
        A,
        B,
        C,
        D,
        delta_bias,
        initial_state,
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

    A boolean mask becomes an additive 0 / -inf bias of the mask's own (broadcast) shape, one
    Add over the scores; a query row with no allowed key outputs zeros, as PyTorch's SDPA does,
    through one Where over the output rather than over the scores. ``is_causal`` masks key
    j > query i with a lower-triangular (Lq, Lk) mask built from the scores' shape."""
    if enable_gqa:
        raise NotImplementedError("the fp32-softmax SDPA translation does not support enable_gqa")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    scores = op.Mul(op.Cast(op.MatMul(query, op.Transpose(key, perm=[0, 1, 3, 2])), to=_FLOAT),
                    op.Constant(value_float=scale))
    row_ok = None
    if attn_mask is not None and attn_mask.dtype == ir.DataType.BOOL:
        scores = op.Add(scores, op.Where(attn_mask, op.Constant(value_float=0.0),
                                         op.Constant(value_float=float("-inf"))))
        # ReduceSum, not ReduceMax: onnxruntime's symbolic shape inference has no ReduceMax rule
        row_ok = op.Greater(op.ReduceSum(op.Cast(attn_mask, to=_FLOAT), op.Constant(value_ints=[-1]), keepdims=1),
                            op.Constant(value_float=0.0))
    elif attn_mask is not None:
        scores = op.Add(scores, op.Cast(attn_mask, to=_FLOAT))
    if is_causal:
        square = op.Slice(op.Shape(scores), op.Constant(value_ints=[-2]), op.Constant(value_ints=[2**62]))
        lower = op.Cast(op.Trilu(op.ConstantOfShape(square, value=_ONE), upper=0), to=_BOOL)
        scores = op.Where(lower, scores, op.Constant(value_float=float("-inf")))
    out = op.MatMul(op.CastLike(op.Softmax(scores, axis=-1), query), value)
    if row_ok is not None:
        out = op.Where(row_ok, out, op.CastLike(op.Constant(value_float=0.0), out))
    return out


def _amax(self, dim, keepdim: bool = False):
    """amax over one axis as TopK(k=1): the same values, and a shape onnxruntime's symbolic
    shape inference can follow (it has no rule for ReduceMax with its axes as an input)."""
    dims = list(dim) if isinstance(dim, (list, tuple)) else [dim]
    if len(dims) != 1:
        return op.ReduceMax(self, op.Constant(value_ints=dims), keepdims=int(keepdim))
    values, _ = op.TopK(self, op.Constant(value_ints=[1]), axis=dims[0], largest=1, sorted=1)
    return values if keepdim else op.Squeeze(values, op.Constant(value_ints=dims))


def translation_table(precision: str) -> dict[Callable, Callable]:
    """The custom_translation_table for torch.onnx.export at ``precision``."""
    import hvlm_export.ops  # noqa: F401  (registers torch.ops.hvlm)

    del precision  # one translation serves every precision (its float32 casts vanish in fp32 graphs)
    return {
        torch.ops.hvlm.selective_scan.default: _selective_scan,
        torch.ops.aten.scaled_dot_product_attention.default: _sdpa_fp32_softmax,
        torch.ops.aten.amax.default: _amax,
    }
