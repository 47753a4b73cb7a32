"""The ``hvlm::SelectiveScan`` ONNX node: its schema and its FunctionProto body.

Node contract (one node per Mamba layer)::

    y, last_state = hvlm.SelectiveScan(u, delta, A, B, C, D, delta_bias, initial_state,
                                       delta_softplus=0|1, plugin_namespace="hvlm",
                                       plugin_version="2")

    u, delta: (B, D, L) T        A: (D, N) float       B, C: (B, N, L) T
    D, delta_bias: (D,) float    initial_state: (B, D, N) float (zeros outside streaming)
    y: (B, D, L) T               last_state: (B, D, N) float
    T in {float, float16, bfloat16}; everything is computed in float32. Version 1 of the
    contract had no initial_state input.

The z gate of ``hvlm::selective_scan`` is applied after the node with standard ops, so the
node has no optional inputs (ONNX function bodies cannot branch on a missing input).

The body is the chunked algorithm of ``hvlm_export.ops.selective_scan`` written with standard
ONNX ops: a sequential loop over a fixed chunk of ``SCAN_CHUNK`` steps (unrolled: the chunk is
a constant), run for all chunks at once; the chunk carries in two levels (a sequential pass over
groups of ``CARRY_GROUP`` chunks, a Hillis-Steele scan over the groups); then every chunk again
from its carry, reading out y with one MatMul per step. No Loop/Scan op, and the node count does
not depend on L; the body is exact for L <= SCAN_CHUNK * 2**CARRY_LEVELS (33.5M tokens).
"""

from __future__ import annotations

import itertools

import onnx
from onnx import TensorProto, helper

from hvlm_export.artifacts import SCAN_DOMAIN, SCAN_INPUTS, SCAN_OP, SCAN_OUTPUTS, SCAN_PLUGIN_VERSION
from hvlm_export.ops.selective_scan import SCAN_CHUNK

__all__ = ["CARRY_GROUP", "CARRY_LEVELS", "scan_function", "scan_schema"]

CARRY_LEVELS = 20
#: chunks per group of the two-level carry scan (a sequential pass inside a group; a power of two)
CARRY_GROUP = 32


def scan_schema() -> onnx.defs.OpSchema:
    """An OpSchema for the node, registered only while exporting (onnxscript needs one)."""
    p = onnx.defs.OpSchema.FormalParameter
    types = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    return onnx.defs.OpSchema(
        SCAN_OP,
        SCAN_DOMAIN,
        1,
        doc=__doc__,
        inputs=[p(n, "F" if n in ("A", "D", "delta_bias", "initial_state") else "T") for n in SCAN_INPUTS],
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
    return g.op("Transpose", flat, perm=[1, 0])


def _steps(g: _Body, x: str, pad: str, nc: str, b: str, chunk_1d: str) -> str:
    """(b, k, L) -> (nc, T, b, k): pad L to nc * T, then chunk-major with channels innermost.

    Channels (k) go innermost so that every broadcast in the body runs over long contiguous
    spans (ONNX Runtime's CPU broadcasting is slow for short innermost spans), and one step
    of every chunk, (nc, b, k), is a gather of contiguous b * k blocks.
    """
    pads = g.op("Concat", g.const([0, 0, 0, 0, 0]), g.op("Unsqueeze", pad, g.const([0])), axis=0)
    k = g.op("Gather", g.op("Shape", x), g.const(1), axis=0)
    t_major = _to_2d_transposed(g, g.op("Pad", x, pads), g.op("Mul", b, k))  # (nc * T, b * k)
    nc_1d, b_1d, k_1d = (g.op("Unsqueeze", s, g.const([0])) for s in (nc, b, k))
    # no op on constants alone anywhere in the body (the chunk is a 1-D constant as is): constant
    # folders that recurse into functions (onnx-graphsurgeon, polygraphy) then leave it alone
    shape = g.op("Concat", nc_1d, chunk_1d, b_1d, k_1d, axis=0)
    return g.op("Reshape", t_major, shape)


def _shift_in(g: _Body, x: str, amount: str, nc: str, fill: float) -> str:
    """Shift (nc, b, n, d) right by ``amount`` along axis 0, filling with ``fill``."""
    pads = g.op("Concat", amount, g.const([0, 0, 0, 0, 0, 0, 0]), axis=0)
    padded = g.op("Pad", x, pads, g.const(fill, TensorProto.FLOAT))
    return g.op("Slice", padded, g.const([0]), nc, g.const([0]))


class _Layout:
    """Shape values of the body: b, d, L, the chunk length T and count nc (all int64 scalars)."""

    def __init__(self, g: _Body, chunk: int) -> None:
        shape_u = g.op("Shape", "u")
        self.b, self.d, self.length = (g.op("Gather", shape_u, g.const(i), axis=0) for i in range(3))
        self.t = g.const(chunk)
        self.t_1d = g.const([chunk])
        self.pad = g.op("Mod", g.op("Sub", self.t, g.op("Mod", self.length, self.t)), self.t)
        self.nc = g.op("Div", g.op("Add", self.length, self.pad), self.t)
        self.nc_1d = g.op("Unsqueeze", self.nc, g.const([0]))

    def steps(self, g: _Body, x: str) -> str:
        return _steps(g, x, self.pad, self.nc, self.b, self.t_1d)


def _discretized(g: _Body) -> tuple[str, str, str, str]:
    """u, delta' = softplus?(delta + delta_bias), B, C, all float32."""
    u, dt, b_in, c_in = (g.op("Cast", name, to=TensorProto.FLOAT) for name in ("u", "delta", "B", "C"))
    dt = g.op("Add", dt, g.op("Unsqueeze", "delta_bias", g.const([1])))
    use_softplus = g.op("Cast", g.attr_const("delta_softplus"), to=TensorProto.BOOL)
    return u, g.op("Where", use_softplus, g.op("Softplus", dt), dt), b_in, c_in


def _hillis_steele(g: _Body, h: str, decay: str, count_1d: str, levels: int) -> str:
    """Inclusive H_k = P_k H_{k-1} + h_k over axis 0 with ``levels`` static levels (a shift is
    clamped to the length, so the graph never depends on it)."""
    prod, carry = decay, h
    for level in range(levels):
        amount = g.op("Min", g.const([1 << level]), count_1d)
        carry = g.op("Add", g.op("Mul", prod, _shift_in(g, carry, amount, count_1d, 0.0)), carry)
        if level + 1 < levels:
            prod = g.op("Mul", prod, _shift_in(g, prod, amount, count_1d, 1.0))
    return carry


def _carries(g: _Body, h: str, chunk_decay: str, layout: _Layout, levels: int) -> str:
    """State at each chunk end, H_c = P_c H_{c-1} + h_c, in two levels: chunks grouped by
    CARRY_GROUP, a sequential pass inside every group (unrolled: the group is a constant), a
    Hillis-Steele scan over the groups' end states, then each chunk gets its group's carry-in
    times its decay since the group's start. (A Hillis-Steele scan over all chunks spends most
    of its levels, each a pass over every chunk's state, shifting by more than there are.)"""
    group, unsq1 = CARRY_GROUP, g.const([1])
    ng = g.op("Div", g.op("Add", layout.nc, g.const(group - 1)), g.const(group))
    ng_1d = g.op("Unsqueeze", ng, g.const([0]))
    tail = g.op("Sub", g.op("Mul", ng_1d, g.const([group])), layout.nc_1d)
    grouped_shape = g.op("Concat", ng_1d, g.const([group]), g.op("Slice", g.op("Shape", h), unsq1, g.const([4])),
                         axis=0)

    def grouped(x: str, fill: float) -> str:  # (nc, b, n, d) -> (ng, G, b, n, d), padded with fill
        pads = g.op("Concat", g.const([0, 0, 0, 0]), tail, g.const([0, 0, 0]), axis=0)
        return g.op("Reshape", g.op("Pad", x, pads, g.const(fill, TensorProto.FLOAT)), grouped_shape)

    h_g, p_g = grouped(h, 0.0), grouped(chunk_decay, 1.0)
    local, since = [], []  # per chunk: its state from a zero group start, its decay since the start
    for i in range(group):
        h_i, p_i = g.op("Gather", h_g, g.const(i), axis=1), g.op("Gather", p_g, g.const(i), axis=1)
        local.append(h_i if i == 0 else g.op("Add", g.op("Mul", p_i, local[-1]), h_i))
        since.append(p_i if i == 0 else g.op("Mul", p_i, since[-1]))
    ends = _hillis_steele(g, local[-1], since[-1], ng_1d, levels - (group - 1).bit_length())  # group: a power of 2
    one = g.op("Min", g.const([1]), ng_1d)  # no op on constants alone in the body (see _steps)
    carry_in = g.op("Unsqueeze", _shift_in(g, ends, one, ng_1d, 0.0), unsq1)  # (ng, 1, b, n, d)
    stacked = [g.op("Concat", *(g.op("Unsqueeze", x, unsq1) for x in xs), axis=1) for xs in (local, since)]
    full = g.op("Add", stacked[0], g.op("Mul", stacked[1], carry_in))  # (ng, G, b, n, d)
    flat_shape = g.op("Concat", g.const([-1]), g.op("Slice", grouped_shape, g.const([2]), g.const([5])), axis=0)
    return g.op("Slice", g.op("Reshape", full, flat_shape), g.const([0]), layout.nc_1d, g.const([0]))


def _readout(g: _Body, ys: list[str], u: str, layout: _Layout) -> None:
    """y (b, d, L) from the per-step readouts (nc, 1, b, d), plus D u, cast like u."""
    unsq0 = g.const([0])
    y_t_major = g.op("Concat", *ys, axis=1)  # (nc, T, b, d)
    y = _to_2d_transposed(g, y_t_major, g.op("Mul", layout.nc, layout.t))  # (b * d, nc * T)
    flat = g.op("Concat", *(g.op("Unsqueeze", s, unsq0) for s in (layout.b, layout.d)), g.const([-1]), axis=0)
    y = g.op("Slice", g.op("Reshape", y, flat), g.const([0]), g.op("Unsqueeze", layout.length, unsq0), g.const([2]))
    y = g.op("Add", y, g.op("Mul", u, g.op("Unsqueeze", "D", g.const([1]))))
    g.nodes.append(helper.make_node("CastLike", [y, "u"], ["y"]))


def scan_function(opset: int, chunk: int = SCAN_CHUNK, levels: int = CARRY_LEVELS) -> onnx.FunctionProto:
    """The FunctionProto ``hvlm::SelectiveScan`` for a model of default-domain ``opset``."""
    g = _Body()
    u, dt, b_in, c_in = _discretized(g)
    layout = _Layout(g, chunk)
    dt_s, du_s = layout.steps(g, dt), layout.steps(g, g.op("Mul", dt, u))  # (nc, T, b, d)
    last_axis, unsq_n = g.const([-1]), g.const([2])
    b_s = g.op("Unsqueeze", layout.steps(g, b_in), last_axis)  # (nc, T, b, n, 1)
    c_s = g.op("Unsqueeze", layout.steps(g, c_in), g.const([-2]))  # (nc, T, b, 1, n): rows for a MatMul
    a = g.op("Unsqueeze", g.op("Einsum", "A", equation="dn->nd"), g.const([0, 1]))  # (1, 1, n, d)

    def input_term(t: int) -> str:  # delta_t u_t B_t for every chunk, (nc, b, n, d)
        idx = g.const(t)
        return g.op("Mul", g.op("Unsqueeze", g.op("Gather", du_s, idx, axis=1), unsq_n), g.op("Gather", b_s, idx, axis=1))

    # 1. the state at every chunk end, each chunk from zero: h_t = exp(delta_t A) h_{t-1} + input_t
    h, decays = None, []
    for t in range(chunk):  # T is a constant: unrolled
        decays.append(g.op("Exp", g.op("Mul", g.op("Unsqueeze", g.op("Gather", dt_s, g.const(t), axis=1), unsq_n), a)))
        h = input_term(t) if h is None else g.op("Add", g.op("Mul", decays[t], h), input_term(t))

    # 2. carries across chunks (the decay over a chunk is exp(A * sum of its deltas)); the
    #    initial state enters through chunk 0: its end state gains decay_0 * h0
    cum = g.op("ReduceSum", dt_s, g.const([1]), keepdims=0)  # (nc, b, d)
    chunk_decay = g.op("Exp", g.op("Mul", g.op("Unsqueeze", cum, unsq_n), a))  # (nc, b, n, d)
    h0 = g.op("Unsqueeze", g.op("Transpose", g.op("Cast", "initial_state", to=TensorProto.FLOAT), perm=[0, 2, 1]),
              g.const([0]))  # (1, b, n, d)
    h0_first = g.op("Pad", h0, g.op("Concat", g.const([0, 0, 0, 0]), g.op("Sub", layout.nc_1d, g.const([1])),
                                    g.const([0, 0, 0]), axis=0))  # h0 at chunk 0, zeros after
    h = g.op("Add", h, g.op("Mul", chunk_decay, h0_first))
    carry = _carries(g, h, chunk_decay, layout, levels)

    # 3. run every chunk again from its carried-in state (h0 for chunk 0), reading out y
    h = g.op("Concat", h0, g.op("Slice", carry, g.const([0]), g.op("Sub", layout.nc_1d, g.const([1])), g.const([0])),
             axis=0)
    ys = []
    for t in range(chunk):
        h = g.op("Add", g.op("Mul", decays[t], h), input_term(t))
        y_t = g.op("MatMul", g.op("Gather", c_s, g.const(t), axis=1), h)  # C_t h_t: (nc, b, 1, d)
        ys.append(g.op("Unsqueeze", g.op("Squeeze", y_t, unsq_n), g.const([1])))
    _readout(g, ys, u, layout)
    last = g.op("Einsum", g.op("Gather", carry, g.op("Sub", layout.nc, g.const(1)), axis=0), equation="bnd->bdn")
    g.nodes.append(helper.make_node("Identity", [last], ["last_state"]))
    return _function(g, opset)


def _function(g: _Body, opset: int) -> onnx.FunctionProto:
    fn = helper.make_function(
        SCAN_DOMAIN,
        SCAN_OP,
        list(SCAN_INPUTS),
        list(SCAN_OUTPUTS),
        g.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=[],
        doc_string="Chunked selective scan (see hvlm_export/exporters/scan_body.py).",
    )
    fn.attribute_proto.extend(
        [
            helper.make_attribute("delta_softplus", 0),
            helper.make_attribute("plugin_namespace", SCAN_DOMAIN),
            helper.make_attribute("plugin_version", SCAN_PLUGIN_VERSION),
        ]
    )
    return fn
