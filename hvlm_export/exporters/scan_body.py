"""The ``hvlm::SelectiveScan`` ONNX node: its schema and its FunctionProto body.

Node contract (one node per Mamba layer)::

    y, last_state = hvlm.SelectiveScan(u, delta, A, B, C, D, delta_bias,
                                       delta_softplus=0|1, plugin_namespace="hvlm",
                                       plugin_version="1")

    u, delta: (B, D, L) T        A: (D, N) float       B, C: (B, N, L) T
    D, delta_bias: (D,) float    y: (B, D, L) T        last_state: (B, D, N) float
    T in {float, float16, bfloat16}; everything is computed in float32.

The z gate of ``hvlm::selective_scan`` is applied after the node with standard ops, so the
node has no optional inputs (ONNX function bodies cannot branch on a missing input).

The body is the chunked algorithm of ``hvlm_export.ops.selective_scan`` written with standard
ONNX ops: a sequential loop over a fixed chunk of ``SCAN_CHUNK`` steps (unrolled: the chunk is
a constant), run for all chunks at once, then a Hillis-Steele scan over the chunk carries with
``CARRY_LEVELS`` levels. No Loop/Scan op, and the node count does not depend on L; the body is
exact for L <= SCAN_CHUNK * 2**CARRY_LEVELS (33.5M tokens).
"""

from __future__ import annotations

import itertools

import onnx
from onnx import TensorProto, helper

from hvlm_export.ops.selective_scan import SCAN_CHUNK

__all__ = [
    "DOMAIN",
    "OP_TYPE",
    "CARRY_LEVELS",
    "PLUGIN_VERSION",
    "INPUTS",
    "OUTPUTS",
    "scan_function",
    "scan_schema",
]

DOMAIN = "hvlm"
OP_TYPE = "SelectiveScan"
PLUGIN_VERSION = "1"
CARRY_LEVELS = 20
TRANSPOSE_2D = "Transpose"
INPUTS = ("u", "delta", "A", "B", "C", "D", "delta_bias")
OUTPUTS = ("y", "last_state")


def scan_schema() -> onnx.defs.OpSchema:
    """An OpSchema for the node, registered only while exporting (onnxscript needs one)."""
    p = onnx.defs.OpSchema.FormalParameter
    types = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    return onnx.defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        1,
        doc=__doc__,
        inputs=[p(n, "F" if n in ("A", "D", "delta_bias") else "T") for n in INPUTS],
        outputs=[p("y", "T"), p("last_state", "F")],
        type_constraints=[("T", types, "data"), ("F", ["tensor(float)"], "float32 parameters and state")],
        attributes=[
            onnx.defs.OpSchema.Attribute("delta_softplus", onnx.defs.OpSchema.AttrType.INT, "softplus on delta"),
            onnx.defs.OpSchema.Attribute("plugin_namespace", onnx.defs.OpSchema.AttrType.STRING, "TRT plugin namespace"),
            onnx.defs.OpSchema.Attribute("plugin_version", onnx.defs.OpSchema.AttrType.STRING, "TRT plugin version"),
        ],
    )


class _Body:
    """Collects the nodes of a function body, naming every value uniquely."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._ids = itertools.count()

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs) -> str | list[str]:
        names = [f"{op_type.lower()}_{next(self._ids)}" for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, values: list[int] | int | float, dtype=TensorProto.INT64) -> str:
        dims = [] if not isinstance(values, list) else [len(values)]
        vals = values if isinstance(values, list) else [values]
        return self.op("Constant", value=helper.make_tensor("v", dtype, dims, vals))

    def attr_const(self, attr: str) -> str:
        """A Constant whose int value is the function attribute ``attr``."""
        name = f"attr_{attr}"
        node = helper.make_node("Constant", [], [name])
        node.attribute.append(onnx.AttributeProto(name="value_int", ref_attr_name=attr, type=onnx.AttributeProto.INT))
        self.nodes.append(node)
        return name


def _to_2d_transposed(g: _Body, x: str, rows: str) -> str:
    """(r, c) view of ``x`` with ``rows`` rows, transposed to (c, r): a plain 2-D transpose,
    which ONNX Runtime runs with its blocked kernel (4-D permutations are far slower)."""
    flat = g.op("Reshape", x, g.op("Concat", g.op("Unsqueeze", rows, g.const([0])), g.const([-1]), axis=0))
    return g.op(TRANSPOSE_2D, flat, **({"perm": [1, 0]} if TRANSPOSE_2D == "Transpose" else {"equation": "ij->ji"}))


def _steps(g: _Body, x: str, pad: str, nc: str, b: str, chunk: str) -> str:
    """(b, k, L) -> (nc, T, b, k): pad L to nc * T, then chunk-major with channels innermost.

    Channels (k) go innermost so that every broadcast in the body runs over long contiguous
    spans (ONNX Runtime's CPU broadcasting is slow for short innermost spans), and one step
    of every chunk, (nc, b, k), is a gather of contiguous b * k blocks.
    """
    pads = g.op("Concat", g.const([0, 0, 0, 0, 0]), g.op("Unsqueeze", pad, g.const([0])), axis=0)
    k = g.op("Gather", g.op("Shape", x), g.const(1), axis=0)
    t_major = _to_2d_transposed(g, g.op("Pad", x, pads), g.op("Mul", b, k))  # (nc * T, b * k)
    shape = g.op("Concat", *(g.op("Unsqueeze", s, g.const([0])) for s in (nc, chunk, b, k)), axis=0)
    return g.op("Reshape", t_major, shape)


def _shift_in(g: _Body, x: str, amount: str, nc: str, fill: float) -> str:
    """Shift (nc, b, n, d) right by ``amount`` along axis 0, filling with ``fill``."""
    pads = g.op("Concat", amount, g.const([0, 0, 0, 0, 0, 0, 0]), axis=0)
    padded = g.op("Pad", x, pads, g.const(fill, TensorProto.FLOAT))
    return g.op("Slice", padded, g.const([0]), nc, g.const([0]))


def scan_function(opset: int, chunk: int = SCAN_CHUNK, levels: int = CARRY_LEVELS) -> onnx.FunctionProto:
    """The FunctionProto ``hvlm::SelectiveScan`` for a model of default-domain ``opset``."""
    g = _Body()
    f32 = TensorProto.FLOAT
    u, dt, Bf, Cf = (g.op("Cast", name, to=f32) for name in ("u", "delta", "B", "C"))
    dt = g.op("Add", dt, g.op("Unsqueeze", "delta_bias", g.const([1])))
    use_softplus = g.op("Cast", g.attr_const("delta_softplus"), to=TensorProto.BOOL)
    dt = g.op("Where", use_softplus, g.op("Softplus", dt), dt)

    shape_u = g.op("Shape", "u")
    b, d, length = (g.op("Gather", shape_u, g.const(i), axis=0) for i in range(3))
    t_const = g.const(chunk)
    pad = g.op("Mod", g.op("Sub", t_const, g.op("Mod", length, t_const)), t_const)
    nc = g.op("Div", g.op("Add", length, pad), t_const)
    unsq0 = g.const([0])
    nc_1d = g.op("Unsqueeze", nc, unsq0)

    dt_s = _steps(g, dt, pad, nc, b, t_const)  # (nc, T, b, d)
    du_s = _steps(g, g.op("Mul", dt, u), pad, nc, b, t_const)
    last_axis = g.const([-1])
    b_s = g.op("Unsqueeze", _steps(g, Bf, pad, nc, b, t_const), last_axis)  # (nc, T, b, n, 1)
    c_s = g.op("Unsqueeze", _steps(g, Cf, pad, nc, b, t_const), last_axis)
    a = g.op("Unsqueeze", g.op("Einsum", "A", equation="dn->nd"), g.const([0, 1]))  # (1, 1, n, d)
    unsq_n = g.const([2])

    def step(t: int, h: str | None) -> tuple[str, str]:
        """h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t for every chunk; returns (h_t, decay)."""
        idx = g.const(t)
        bu = g.op("Mul", g.op("Unsqueeze", g.op("Gather", du_s, idx, axis=1), unsq_n),
                  g.op("Gather", b_s, idx, axis=1))  # (nc, b, n, d)
        decay = g.op("Exp", g.op("Mul", g.op("Unsqueeze", g.op("Gather", dt_s, idx, axis=1), unsq_n), a))
        return (bu if h is None else g.op("Add", g.op("Mul", decay, h), bu)), decay

    # 1. the state at every chunk end, each chunk starting from zero (T is a constant: unrolled)
    h, decays = None, []
    for t in range(chunk):
        h, decay = step(t, h)
        decays.append(decay)

    # 2. carries: state at each chunk end, H_c = P_c * H_{c-1} + h_c (Hillis-Steele over nc)
    cum = g.op("ReduceSum", dt_s, g.const([1]), keepdims=0)  # (nc, b, d): delta summed over a chunk
    prod, carry = g.op("Exp", g.op("Mul", g.op("Unsqueeze", cum, unsq_n), a)), h  # (nc, b, n, d)
    for level in range(levels):
        amount = g.op("Min", g.const([1 << level]), nc_1d)
        carry = g.op("Add", g.op("Mul", prod, _shift_in(g, carry, amount, nc_1d, 0.0)), carry)
        if level + 1 < levels:
            prod = g.op("Mul", prod, _shift_in(g, prod, amount, nc_1d, 1.0))

    # 3. run every chunk again from its carried-in state, reading out y (decays reused)
    h, ys = _shift_in(g, carry, g.const([1]), nc_1d, 0.0), []
    for t in range(chunk):
        idx = g.const(t)
        bu = g.op("Mul", g.op("Unsqueeze", g.op("Gather", du_s, idx, axis=1), unsq_n),
                  g.op("Gather", b_s, idx, axis=1))
        h = g.op("Add", g.op("Mul", decays[t], h), bu)
        y_t = g.op("ReduceSum", g.op("Mul", h, g.op("Gather", c_s, idx, axis=1)), unsq_n, keepdims=0)
        ys.append(g.op("Unsqueeze", y_t, g.const([1])))
    y_t_major = g.op("Concat", *ys, axis=1)  # (nc, T, b, d)
    y = _to_2d_transposed(g, y_t_major, g.op("Mul", nc, t_const))  # (b * d, nc * T)
    flat = g.op("Concat", *(g.op("Unsqueeze", s, unsq0) for s in (b, d)), g.const([-1]), axis=0)
    y = g.op("Slice", g.op("Reshape", y, flat), g.const([0]), g.op("Unsqueeze", length, unsq0), g.const([2]))
    y = g.op("Add", y, g.op("Mul", u, g.op("Unsqueeze", "D", g.const([1]))))
    g.nodes.append(helper.make_node("CastLike", [y, "u"], ["y"]))
    last = g.op("Einsum", g.op("Gather", carry, g.op("Sub", nc, g.const(1)), axis=0), equation="bnd->bdn")
    g.nodes.append(helper.make_node("Identity", [last], ["last_state"]))

    fn = helper.make_function(
        DOMAIN,
        OP_TYPE,
        list(INPUTS),
        list(OUTPUTS),
        g.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=[],
        doc_string="Chunked selective scan (see hvlm_export/exporters/scan_body.py).",
    )
    fn.attribute_proto.extend(
        [
            helper.make_attribute("delta_softplus", 0),
            helper.make_attribute("plugin_namespace", DOMAIN),
            helper.make_attribute("plugin_version", PLUGIN_VERSION),
        ]
    )
    return fn
