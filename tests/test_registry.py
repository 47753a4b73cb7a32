"""The registry is the spine: names as in DESIGN.md, every entry usable."""

from __future__ import annotations

import pytest

from hvlm_export import registry
from hvlm_export.errors import UnknownMechanismError

DESIGN_NAMES = ["strided", "local_global", "cross_memory", "hierarchical_block", "performer", "mamba", "linear_block"]


def test_names_match_design():
    assert registry.names() == DESIGN_NAMES


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UnknownMechanismError, match="valid names are strided"):
        registry.get("flash")


@pytest.mark.parametrize("name", DESIGN_NAMES)
def test_spec_is_complete(name):
    spec = registry.get(name)
    assert set(spec.tolerances) == set(spec.large_input_tolerances) == set(registry.PRECISIONS)
    for precision, tol in spec.tolerances.items():
        large = spec.large_input_tolerances[precision]
        for key in ("nrmse", "gain", "offset", "peak"):
            assert 0 < getattr(tol, key) <= getattr(large, key) <= 1, (precision, key)
        assert tol.gain < 0.01 and tol.offset < 0.02, "a 1% gain must fail in every precision"
        assert tol.atol is None and tol.rtol is None, "element-wise limits are the user's opt-in"
    assert spec.inputs[0] == "x" and spec.outputs == ("y",)
    assert set(spec.dynamic_axes) == {*spec.inputs, "y"}
    lengths = spec.lengths(spec.kwargs(small=True))
    assert 1 in lengths and len(lengths) >= 3


def test_defaults_are_the_documented_ones():
    model = registry.get("strided").build()
    assert (model.dim, model.num_heads, model.stride) == (768, 12, 4)


def test_coverage_guard():
    """Export, validate, lint and module tests iterate the registry: a new mechanism cannot
    be registered without being exported, validated and linted by the suite."""
    from tests.exporters import test_onnx_export
    from tests.modules import test_common
    from tests.validators import test_parity, test_trt_lint

    for module in (test_onnx_export, test_parity, test_common):
        assert set(registry.names()) <= set(module.NAMES), module.__name__
    lint_names = test_trt_lint.test_every_export_lints_clean.pytestmark
    names = next(m.args[1] for m in lint_names if m.args[0] == "name")
    assert set(registry.names()) <= set(names)
