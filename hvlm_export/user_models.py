"""A user's own nn.Module: imported by path, fed by example shapes, named by its signature.

* :func:`import_target`: ``"package.module:callable"`` -> the callable (a class or factory),
  importable from the current directory too (as ``python -m`` would);
* :func:`parse_example_shape`: ``"x=B,L,256"`` -> the shape and which axes are dynamic;
* :func:`input_names` / :func:`output_names`: the forward's parameter names, and ``y`` or
  ``y0, y1, ...`` for a tensor or a tuple of tensors.

Nothing here imports the exporters or the validators: the registry turns these into a
:class:`~hvlm_export.registry.ModelSpec`, the exporter and the validator use that.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hvlm_export.errors import ExportError

__all__ = ["import_target", "is_import_path", "parse_example_shape", "example_shapes", "input_names",
           "output_names", "BATCH_SYMBOL"]

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: the symbol of the batch axis in an example shape (every input shares it)
BATCH_SYMBOL = "B"
_AXIS_NAMES = {"B": "batch", "L": "seq", "M": "mem_seq"}


def is_import_path(text: Any) -> bool:
    """Whether ``text`` reads as ``package.module:callable``."""
    return isinstance(text, str) and bool(_TARGET.match(text))


def import_target(target: str, error: type[Exception] = ExportError) -> Callable[..., Any]:
    """The object ``package.module:attr.path`` names; raises ``error`` saying what failed."""
    if not is_import_path(target):
        raise error(f"{target!r} is not an import path", "write it as package.module:callable.")
    module_name, _, attr_path = target.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # like `python -m`: a module in the working directory imports
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise error(f"cannot import {module_name!r} (from {target!r}): {err}",
                    "it must be importable from the working directory or PYTHONPATH.") from err
    except Exception as err:  # the user's module raised while importing
        raise error(f"importing {module_name!r} raised {type(err).__name__}: {err}") from err
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise error(f"{module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{target!r} names a {type(obj).__name__} object, not a class or function")
    return obj


def build_module(target: str, kwargs: Mapping[str, Any], error: type[Exception] = ExportError) -> nn.Module:
    """Call ``target`` with ``kwargs``; the result must be an nn.Module."""
    factory = import_target(target, error)
    try:
        module = factory(**kwargs)
    except Exception as err:  # whatever the user's constructor raises
        raise error(f"{target}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) raised "
                    f"{type(err).__name__}: {err}") from err
    if not isinstance(module, nn.Module):
        raise error(f"{target!r} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def parse_example_shape(text: str) -> tuple[str, list[int | str]]:
    """``"x=B,L,256"`` -> ("x", ["B", "L", 256]); symbols (letters) mark dynamic axes."""
    name, sep, dims = text.partition("=")
    items = [d.strip() for d in dims.split(",")]
    if not sep or not name.isidentifier() or not dims or any(not d for d in items):
        raise ExportError(f"--example-shape expects NAME=D0,D1,..., got {text!r}",
                          "sizes are numbers, or letters for dynamic axes (B: batch, L: sequence), e.g. x=B,L,256.")
    out: list[int | str] = []
    for d in items:
        if d.isdigit() and int(d) > 0:
            out.append(int(d))
        elif d.isidentifier():
            out.append(d)
        else:
            raise ExportError(f"--example-shape {name}: {d!r} is neither a positive size nor an axis symbol")
    return name, out


def example_shapes(parsed: Mapping[str, Sequence[int | str]], batch: int, seq_len: int,
                   dynamic: bool) -> tuple[dict[str, tuple[int, ...]], dict[str, dict[int, str]]]:
    """Concrete example shapes and the dynamic axes of each input. Symbols become dynamic axes
    (B the batch, size ``batch``; the first other symbol size ``seq_len``, later ones distinct
    sizes so torch.export does not equate them); with numbers only, axis 0 is the batch and
    axis 1 the sequence by convention. ``dynamic`` False: every axis fixed."""
    sizes: dict[str, int] = {BATCH_SYMBOL: batch}
    shapes, axes = {}, {}
    for name, dims in parsed.items():
        symbolic = any(isinstance(d, str) for d in dims)
        shape, dyn = [], {}
        for axis, d in enumerate(dims):
            if isinstance(d, str):
                if d not in sizes:
                    sizes[d] = seq_len if len(sizes) == 1 else seq_len // 2 + 2 + len(sizes)
                shape.append(sizes[d])
                dyn[axis] = _AXIS_NAMES.get(d, d)
            else:
                shape.append(d)
                if not symbolic and axis < 2:
                    dyn[axis] = "batch" if axis == 0 else ("seq" if name == "x" else f"{name}_seq")
        shapes[name] = tuple(shape)
        axes[name] = dyn if dynamic else {}
    return shapes, axes


def input_names(module: nn.Module, given: Sequence[str] | None, count: int | None = None) -> tuple[str, ...]:
    """The forward's positional parameter names, in order: all of them (``given`` None), the
    ones named in ``given`` (checked), or the first ``count``."""
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in params]
    if given is not None:
        unknown = [n for n in given if n not in names]
        if unknown:
            raise ExportError(f"{type(module).__name__}.forward takes ({', '.join(names)}); no parameter "
                              f"named {unknown}", "name the example shapes after the forward's parameters.")
        required = [p.name for p in params if p.default is p.empty and p.name not in given]
        if required:
            raise ExportError(f"{type(module).__name__}.forward needs {required} too",
                              f"add --example-shape {required[0]}=... for it.")
        return tuple(n for n in names if n in given)
    count = len(names) if count is None else count
    if count > len(names):
        raise ExportError(f"{count} example inputs for {type(module).__name__}.forward({', '.join(names)})")
    return tuple(names[:count])


def output_names(module: nn.Module, example: Sequence[torch.Tensor]) -> tuple[str, ...]:
    """``("y",)`` for a tensor output, ``("y0", "y1", ...)`` for a tuple or list of tensors."""
    with torch.no_grad():
        try:
            out = module(*example)
        except Exception as err:  # the user's forward failed on the example inputs
            raise ExportError(f"{type(module).__name__} failed on the example inputs "
                              f"{[tuple(t.shape) for t in example]}: {type(err).__name__}: {err}",
                              "check --example-shape against what the forward expects.") from err
    if isinstance(out, torch.Tensor):
        return ("y",)
    if isinstance(out, (tuple, list)) and out and all(isinstance(t, torch.Tensor) for t in out):
        return tuple(f"y{i}" for i in range(len(out)))
    kind = type(out).__name__ if not isinstance(out, (tuple, list)) else f"{type(out).__name__} of " + \
        ", ".join(sorted({type(t).__name__ for t in out}) or ["nothing"])
    raise ExportError(f"{type(module).__name__} returns a {kind}: export supports a tensor or a tuple of tensors",
                      "return the tensors as a tuple (a dict: its values, in order).")
