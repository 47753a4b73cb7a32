"""Graph passes around the torch exporter: its optimisation, keeping every parameter, and
quiet third-party logs while it runs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import onnx_ir as ir
import onnxscript.optimizer
import onnxscript.rewriter
from onnx_ir.passes import common

__all__ = ["optimize_keeping_state", "quiet_exporter_logs", "strip_initializer_prefix"]

#: loggers that talk during an export about nothing the user can act on: torchvision ops not
#: registered (never used here), sympy failing to print a guard ("Failed to reduce
#: inequalities", harmless), and the optimiser's per-pass INFO lines
_NOISY = ("torch.onnx", "torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export",
          "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_exporter_logs() -> Iterator[None]:
    """Raise the noisy third-party loggers to ERROR for the duration (levels restored)."""
    loggers = [logging.getLogger(name) for name in _NOISY]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def optimize_keeping_state(model: ir.Model) -> None:
    """The exporter's default optimisation (constant folding, rewrites, CSE, cleanup) minus
    two steps that lose parameters: no op reading an initializer is folded, and equal
    initializers are not merged (two LayerNorms at their init values would share one name).
    Every state_dict entry the graph reads stays an initializer of its name and value
    (TensorRT refit and readers of the graph go by name); ONNX Runtime and TensorRT fold a
    weight's Transpose or Mamba's -exp(A_log) when they load the graph."""
    def reads_state(node: ir.Node) -> bool | None:
        return False if any(v is not None and v.is_initializer() for v in node.inputs) else None

    state = dict(model.graph.initializers)  # the program's parameters, buffers and constants
    common.InlinePass()(model)
    for _ in range(2):
        onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True, should_fold=reads_state)
        onnxscript.rewriter.rewrite(model)
        common.RemoveUnusedNodesPass()(model)
    ir.passes.Sequential(
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
    )(model)
    uses = {name: list(value.uses()) for name, value in state.items() if name in model.graph.initializers}
    common.DeduplicateInitializersPass()(model)  # merges the folded constants (then CSE merges nodes)
    for name, value_uses in uses.items():  # ... but not state entries that merely hold equal values
        value = state[name]
        if name not in model.graph.initializers:
            model.graph.register_initializer(value)
        for node, index in value_uses:
            node.replace_input_with(index, value)
    ir.passes.Sequential(
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


def strip_initializer_prefix(model: ir.Model, prefix: str) -> None:
    """Rename initializers ``prefix + name`` to ``name`` (a wrapper module's attribute path,
    such as the step graph's ``layer.``), so every graph of one model uses its state_dict names."""
    for old in [n for n in model.graph.initializers if n.startswith(prefix)]:
        new = old[len(prefix):]
        if new in model.graph.initializers:
            continue
        value = model.graph.initializers.pop(old)
        value.name = new
        model.graph.register_initializer(value)
