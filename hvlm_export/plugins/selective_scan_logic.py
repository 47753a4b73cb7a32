"""Shape, dtype and attribute logic of the SelectiveScan TensorRT plugin, as plain Python.

The ``tensorrt.plugin`` registration (selective_scan_qdp.py) calls these functions, so unit
tests exercise exactly what TensorRT would run at build time, without TensorRT.

Inputs (node order): u, delta, A, B, C, D, delta_bias, initial_state; outputs: y, last_state.
Glossary: B batch, D channels, L length, N state size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hvlm_export.artifacts import SCAN_DOMAIN, SCAN_INPUTS, SCAN_OP, SCAN_OUTPUTS, SCAN_PLUGIN_VERSION

__all__ = [
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "ScanAttrs",
    "PluginInputError",
    "check_input_shapes",
    "output_shapes",
    "output_dtypes",
    "supports_dtypes",
    "supports_position",
]

PLUGIN_NAME = SCAN_OP
PLUGIN_NAMESPACE = SCAN_DOMAIN
PLUGIN_VERSION = SCAN_PLUGIN_VERSION
INPUTS, OUTPUTS = SCAN_INPUTS, SCAN_OUTPUTS
#: dtype names as TensorRT spells them in this module (mapped from trt.DataType by callers)
DATA_TYPES = ("float32", "float16", "bfloat16")


class PluginInputError(ValueError):
    """The plugin was given inputs that break its contract (raised at build time)."""


@dataclass(frozen=True)
class ScanAttrs:
    """The plugin's fields: one int, ``delta_softplus``."""

    delta_softplus: bool

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> ScanAttrs:
        """From plugin fields (name -> int or 1-element array); missing means 0, like the node."""
        raw = fields.get("delta_softplus", 0)
        try:
            value = int(raw[0]) if hasattr(raw, "__len__") else int(raw)  # type: ignore[index]
        except (TypeError, ValueError, IndexError) as err:
            raise PluginInputError(f"delta_softplus must be an int, got {raw!r}") from err
        if value not in (0, 1):
            raise PluginInputError(f"delta_softplus must be 0 or 1, got {value}")
        return cls(bool(value))

    def to_fields(self) -> dict[str, int]:
        return {"delta_softplus": int(self.delta_softplus)}


Dim = int | str  # an int, or a symbolic name / -1 for a dynamic extent


def _same(a: Dim, b: Dim) -> bool:
    """Two extents agree, or at least one is unknown at build time (-1 / symbolic)."""
    return a == b or not isinstance(a, int) or not isinstance(b, int) or a < 0 or b < 0


def check_input_shapes(shapes: Sequence[Sequence[Dim]]) -> None:
    """Raise PluginInputError unless the input shapes follow the contract."""
    if len(shapes) != len(INPUTS):
        raise PluginInputError(f"SelectiveScan takes {len(INPUTS)} inputs {INPUTS}, got {len(shapes)}")
    ranks = {"u": 3, "delta": 3, "A": 2, "B": 3, "C": 3, "D": 1, "delta_bias": 1, "initial_state": 3}
    named = dict(zip(INPUTS, shapes, strict=True))
    for name, shape in named.items():
        if len(shape) != ranks[name]:
            raise PluginInputError(f"input {name} must have rank {ranks[name]}, got shape {tuple(shape)}")
    b, d, length = named["u"]
    n = named["A"][1]
    expected = {
        "delta": (b, d, length), "A": (d, n), "B": (b, n, length), "C": (b, n, length), "D": (d,), "delta_bias": (d,),
        "initial_state": (b, d, n),
    }
    for name, want in expected.items():
        got = tuple(named[name])
        if not all(_same(g, w) for g, w in zip(got, want, strict=True)):
            raise PluginInputError(f"input {name} has shape {got}, expected {want} (u is {tuple(named['u'])})")


def output_shapes(shapes: Sequence[Sequence[Dim]]) -> tuple[tuple[Dim, ...], tuple[Dim, ...]]:
    """(y, last_state) shapes: (B, D, L) and (B, D, N)."""
    check_input_shapes(shapes)
    u, a = shapes[0], shapes[2]
    return (tuple(u), (u[0], u[1], a[1]))


def output_dtypes(dtypes: Sequence[str]) -> tuple[str, str]:
    """(y, last_state) dtypes: y like u, the state always float32."""
    if not supports_dtypes(dtypes):
        raise PluginInputError(
            f"unsupported input dtypes {tuple(dtypes)}: u, delta, B, C share one of {DATA_TYPES}; "
            "A, D, delta_bias, initial_state are float32"
        )
    return (dtypes[0], "float32")


def supports_dtypes(dtypes: Sequence[str]) -> bool:
    """Whether a full I/O or input dtype assignment is one the kernel implements."""
    if len(dtypes) < len(INPUTS):
        return False
    data = dtypes[0]
    ins = dict(zip(INPUTS, dtypes[: len(INPUTS)], strict=True))
    ok = data in DATA_TYPES and all(ins[n] == data for n in ("delta", "B", "C"))
    ok = ok and all(ins[n] == "float32" for n in ("A", "D", "delta_bias", "initial_state"))
    if len(dtypes) > len(INPUTS):
        outs = dtypes[len(INPUTS):]
        ok = ok and len(outs) == len(OUTPUTS) and outs[0] == data and outs[1] == "float32"
    return ok


def supports_position(dtypes: Sequence[str]) -> bool:
    """TensorRT's position-by-position format query: is ``dtypes[-1]`` valid at position
    ``len(dtypes) - 1`` given the choices already made for the earlier positions?"""
    pos = len(dtypes) - 1
    names = (*INPUTS, *OUTPUTS)
    if pos < 0 or pos >= len(names):
        return False
    name, dtype = names[pos], dtypes[pos]
    if name in ("A", "D", "delta_bias", "initial_state", "last_state"):
        return dtype == "float32"
    if name == "u":
        return dtype in DATA_TYPES
    return dtype == dtypes[0]
