"""TensorRT-compatibility lint: an ONNX graph against the TensorRT ONNX parser's restrictions.

Pure Python over the ONNX proto (no TensorRT). The rules and version ranges come from the
TensorRT ONNX parser's documentation (github.com/onnx/onnx-tensorrt, ``docs/operators.md`` for
TensorRT 10.15, opsets 9-24; 11.x reads up to 25), its changelog, and the parser's plugin /
local-function dispatch in ``ModelImporter.cpp`` (up to 10.6 a local function always shadows a
plugin; 10.7-10.14 a registered plugin wins; from 10.15 a plugin wins only for nodes with a
``plugin_namespace`` attribute or with ``ENABLE_PLUGIN_OVERRIDE``). Nodes inside model-local
functions are checked too: the parser imports a function body when no plugin claims it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from hvlm_export.artifacts import SCAN_DOMAIN, SCAN_OP
from hvlm_export.errors import ArtifactError

__all__ = ["Finding", "lint_tensorrt", "lint_model", "format_findings", "RULES"]

#: rule id -> one-line description (what `hvlm-export lint` can report)
RULES = {
    "opset-range": "default-domain opset outside what TensorRT's parser reads (9..25)",
    "unsupported-op": "an op TensorRT's ONNX parser does not implement",
    "dtype": "a tensor type TensorRT rejects or only emulates",
    "loop-scan-output": "Loop with scan outputs (their length cannot be dynamic)",
    "constant-input": "an input the parser needs as a build-time constant is computed",
    "custom-op": "a custom-domain node with neither a local function nor plugin attributes",
    "plugin-priority": "which of plugin or local function the parser will pick, by version",
    "nesting": "subgraphs/functions nested deeper than the parser's limit of 24",
    "op-attribute": "an attribute value the parser does not support",
    "data-dependent-shape": "an op whose output shape depends on data",
    "version": "an op the parser supports only from a given TensorRT version",
}

# docs/operators.md (10.15): status N
UNSUPPORTED_OPS = frozenset(
    """AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
    ConcatFromSequence ConvInteger Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool
    MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement
    QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase
    SequenceInsert SequenceLength SequenceMap SplitToSequence SoftmaxCrossEntropyLoss StringConcat
    StringNormalizer StringSplit TfIdfVectorizer Unique""".split()
)
# op -> index of the input that must be a build-time constant
CONSTANT_INPUTS = {
    "CumSum": 1,
    "ReduceSum": 1, "ReduceMean": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceProd": 1,
    "ReduceL1": 1, "ReduceL2": 1, "ReduceLogSum": 1, "ReduceLogSumExp": 1, "ReduceSumSquare": 1,
    "Squeeze": 1, "Unsqueeze": 1, "OneHot": 1, "TopK": 1,
}
# op -> (minimum TensorRT version, note)
MIN_VERSION = {
    "Attention": ("10.14", "4-D Q/K/V only; no past_key/past_value, no qk_matmul_output"),
    "RMSNormalization": ("10.15", ""),
    "TensorScatter": ("10.15", "4-D, axis -2 only"),
    "Swish": ("11.0", ""),
}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}
_REJECTED_TYPES = {
    TensorProto.STRING: "STRING", TensorProto.COMPLEX64: "COMPLEX64", TensorProto.COMPLEX128: "COMPLEX128",
}
_QUANT_TYPES = {TensorProto.INT8, TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2}
_STANDARD_DOMAINS = {"", "ai.onnx"}
MAX_NESTING = 24


@dataclass(frozen=True)
class Finding:
    """One lint result: where, which rule, how bad, for which TensorRT versions."""

    rule: str
    severity: str  # "error" (the parser will fail or compute wrongly) | "warning" | "info"
    node: str
    op: str
    message: str
    trt_versions: str = "10.x, 11.x"

    def __str__(self) -> str:
        return f"[{self.severity}] {self.rule} {self.op} '{self.node}': {self.message} (TensorRT {self.trt_versions})"


def lint_tensorrt(path_or_model: str | os.PathLike | onnx.ModelProto) -> list[Finding]:
    """Lint an .onnx path or ModelProto; returns the findings (empty = clean)."""
    if isinstance(path_or_model, onnx.ModelProto):
        return lint_model(path_or_model)
    path = Path(path_or_model)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError as err:
        raise ArtifactError(f"{str(path)!r} does not exist") from err
    except IsADirectoryError as err:
        raise ArtifactError(f"{str(path)!r} is a directory, not an ONNX file") from err
    except Exception as err:  # protobuf DecodeError and friends
        raise ArtifactError(f"{str(path)!r} is not a readable ONNX file: {err}") from err
    if not model.ir_version or not model.graph.node:  # an empty file parses as an empty ModelProto
        size = path.stat().st_size
        raise ArtifactError(f"{str(path)!r} is not an ONNX model ({size} bytes{', empty' if not size else ''}: "
                            "no IR version or no graph)", "was the export interrupted? Export again.")
    return lint_model(model)


def lint_model(model: onnx.ModelProto) -> list[Finding]:
    function_names = {f.name for f in model.functions}
    findings = list(_check_opset(model))
    findings += _check_graph(model.graph, function_names, depth=0)
    for fn in model.functions:
        consts = _constants(fn.node, set())
        for node in fn.node:
            findings += _check_node(node, consts, function_names, depth=1, where=f"{fn.domain}::{fn.name}/")
    findings += _check_types(model)
    return findings


def _check_opset(model: onnx.ModelProto) -> Iterator[Finding]:
    for imp in model.opset_import:
        if imp.domain in _STANDARD_DOMAINS and not 9 <= imp.version <= 25:
            yield Finding("opset-range", "error", "<model>", "", f"opset {imp.version}; TensorRT reads 9..24 (10.x), 9..25 (11.x)")
        elif imp.domain in _STANDARD_DOMAINS and imp.version > 24:
            yield Finding("opset-range", "warning", "<model>", "", f"opset {imp.version} needs TensorRT 11", "< 11.0")


def _constants(nodes, initializers: set[str]) -> set[str]:
    """Names whose values are known at build time: initializers, Constants, and pure ops of them."""
    known = set(initializers)
    for node in nodes:
        if node.op_type == "Constant" or (node.input and all(i in known or i == "" for i in node.input)
                                           and node.op_type not in ("RandomNormal", "RandomUniform", "Multinomial")):
            known.update(node.output)
    return known


def _check_graph(graph: onnx.GraphProto, function_names: set[str], depth: int) -> list[Finding]:
    consts = _constants(graph.node, {i.name for i in graph.initializer})
    findings = []
    for node in graph.node:
        findings += _check_node(node, consts, function_names, depth, where="")
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                if depth + 1 > MAX_NESTING:
                    findings.append(Finding("nesting", "error", node.name, node.op_type,
                                            f"nested {depth + 1} levels deep; the parser allows {MAX_NESTING}"))
                else:
                    findings += _check_graph(sub, function_names, depth + 1)
    return findings


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _check_node(node, consts, function_names, depth, where) -> list[Finding]:
    name, op = where + (node.name or node.output[0]), node.op_type
    out: list[Finding] = []
    add = lambda rule, sev, msg, ver="10.x, 11.x": out.append(Finding(rule, sev, name, op, msg, ver))  # noqa: E731
    if node.domain not in _STANDARD_DOMAINS:
        out += _check_custom(node, name, function_names)
        return out
    if op in UNSUPPORTED_OPS:
        add("unsupported-op", "error", f"{op} is not supported by TensorRT's ONNX parser")
    if op in MIN_VERSION:
        version, note = MIN_VERSION[op]
        add("version", "warning", f"{op} needs TensorRT >= {version}" + (f" ({note})" if note else ""), f"< {version}")
    idx = CONSTANT_INPUTS.get(op)
    if idx is not None and len(node.input) > idx and node.input[idx] and node.input[idx] not in consts:
        add("constant-input", "error", f"input {idx} ({node.input[idx]!r}) must be a build-time constant")
    if op == "Loop" and len(node.output) > len(node.input) - 2:
        trip = node.input[0] if node.input else ""
        if not trip or trip not in consts:
            add("loop-scan-output", "error", "Loop scan outputs need a constant trip count (their length cannot be dynamic)")
    if op == "Einsum":
        eq = _attr(node, "equation", b"").decode()
        lhs = eq.split("->")[0]
        if "..." in eq or any(len(set(t.strip())) != len(t.strip()) for t in lhs.split(",")):
            add("version", "error", f"Einsum {eq!r} uses ellipsis or a repeated index", "<= 10.11")
    if op == "Dropout" and len(node.input) > 2 and node.input[2] and node.input[2] not in consts:
        add("constant-input", "error", "Dropout training_mode must be a False constant")
    if op == "TopK" and _attr(node, "sorted", 1) != 1:
        add("op-attribute", "error", "TopK needs sorted=1")
    if op == "ScatterND" and _attr(node, "reduction", b"none") not in (b"none", "none"):
        add("op-attribute", "error", "ScatterND reduction must be 'none' (others are silently ignored on some versions)")
    if op == "Resize" and _attr(node, "antialias", 0):
        add("op-attribute", "error", "Resize antialias is unsupported")
    if op == "LayerNormalization" and len([o for o in node.output if o]) > 1:
        add("op-attribute", "error", "LayerNormalization: only output Y is supported")
    if op in ("NonZero", "NonMaxSuppression"):
        add("data-dependent-shape", "warning", f"{op} has a data-dependent output shape (needs an output allocator)")
    return out


def _check_custom(node, name, function_names) -> list[Finding]:
    has_fn = node.op_type in function_names
    ns = _attr(node, "plugin_namespace")
    ns = ns.decode() if isinstance(ns, bytes) else ns
    out = []
    if (node.domain, node.op_type) == (SCAN_DOMAIN, SCAN_OP) and not has_fn:
        out.append(Finding("scan-function", "error", name, node.op_type,
                           f"the {SCAN_DOMAIN}::{SCAN_OP} function body is missing (a tool that does not keep "
                           "model-local functions, such as onnx.version_converter, dropped it): ONNX Runtime "
                           "cannot run the file and TensorRT needs the plugin; re-export with --opset N instead"))
    elif not has_fn and ns is None:
        out.append(Finding("custom-op", "error", name, node.op_type,
                           f"custom node {node.domain}::{node.op_type} has no local function and no plugin_namespace "
                           "attribute; the parser can only import it through a plugin found by name + domain", "10.x, 11.x"))
    elif has_fn and ns is None:
        out.append(Finding("plugin-priority", "warning", name, node.op_type,
                           "without a plugin_namespace attribute the local function is used even when a plugin is "
                           "registered (unless the parser flag ENABLE_PLUGIN_OVERRIDE is set)", ">= 10.15"))
    elif has_fn:
        out.append(Finding("plugin-priority", "info", name, node.op_type,
                           f"a registered plugin {node.op_type}/{ns} is used; without one, the local function body. "
                           "On TensorRT <= 10.6 the local function always wins over a plugin", "<= 10.6"))
    else:
        out.append(Finding("plugin-priority", "info", name, node.op_type,
                           f"needs the plugin {node.op_type} (namespace {ns!r}) registered before parsing"))
    return out


def _check_types(model: onnx.ModelProto) -> list[Finding]:
    graph = model.graph
    io = {v.name for v in [*graph.input, *graph.output]}
    values = [*graph.input, *graph.output, *graph.value_info]
    out = []
    for v in values:
        kind = v.type.WhichOneof("value")
        if kind in ("sequence_type", "optional_type", "map_type"):
            out.append(Finding("dtype", "error", v.name, "", f"{kind.replace('_type', '')} values are unsupported"))
            continue
        elem = v.type.tensor_type.elem_type
        if elem in _REJECTED_TYPES:
            out.append(Finding("dtype", "error", v.name, "", f"{_REJECTED_TYPES[elem]} tensors are unsupported"))
        elif elem == TensorProto.DOUBLE:
            out.append(Finding("dtype", "warning", v.name, "", "DOUBLE is cast to FLOAT with clamping"))
        elif elem == TensorProto.UINT8 and v.name not in io:
            out.append(Finding("dtype", "error", v.name, "", "UINT8 is allowed only as network input/output"))
        elif elem in _QUANT_TYPES:
            out.append(Finding("dtype", "warning", v.name, "", "quantized types are only accepted through Q/DQ"))
    for init in graph.initializer:
        if init.data_type == TensorProto.DOUBLE:
            out.append(Finding("dtype", "warning", init.name, "", "DOUBLE initializer is cast to FLOAT with clamping"))
    return out


def lint_failed(findings: list[Finding], strict: bool = False) -> bool:
    """Errors fail; with ``strict``, warnings too (notes never do)."""
    return any(f.severity == "error" or (strict and f.severity == "warning") for f in findings)


def format_findings(findings: list[Finding], path: str | os.PathLike | None = None, strict: bool = False) -> str:
    """One line per finding, then a summary line whose verdict is :func:`lint_failed`'s."""
    where = f"{Path(path).name}: " if path else ""
    counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
    lines = [str(f) for f in findings if f.severity != "info"] + [str(f) for f in findings if f.severity == "info"]
    status = "FAILED" if lint_failed(findings, strict) else "PASSED"
    if strict and not counts["error"] and counts["warning"]:
        status += " (--strict: warnings fail)"
    lines.append(f"{status} | TensorRT lint | {where}{counts['error']} errors, {counts['warning']} warnings, {counts['info']} notes")
    return "\n".join(lines)
