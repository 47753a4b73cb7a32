"""Validating a step graph: stream each grid input through the graph in several chunkings
(token by token, a prefill then tokens, random chunks) with ``runtime.Stream`` and compare
the concatenated outputs with the eager module's forward over the whole sequence."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from hvlm_export.errors import HvlmExportError
from hvlm_export.validators.compare import compare
from hvlm_export.validators.report import Case, Report

__all__ = ["chunkings", "run_stream_cases"]

log = logging.getLogger(__name__)

#: sequences longer than this are not streamed token by token in full (time), only their start
_TOKEN_BY_TOKEN_MAX = 48


def chunkings(length: int, seed: int) -> dict[str, list[int]]:
    """Chunk sizes summing to ``length``: token by token, prefill then tokens, random."""
    rng = np.random.default_rng(seed)
    tokens = [1] * length if length <= _TOKEN_BY_TOKEN_MAX else [1] * 16 + [length - 16]
    prefill = max(1, length // 2)
    out = {"tokens": tokens, "prefill+tokens": [prefill] + [1] * min(length - prefill, 16)}
    rest = length - sum(out["prefill+tokens"])
    if rest:
        out["prefill+tokens"].append(rest)
    sizes, left = [], length
    while left:
        sizes.append(int(min(left, rng.integers(1, max(2, length // 3) + 1))))
        left -= sizes[-1]
    out["random"] = sizes
    return out


def run_stream_cases(report: Report, sessions: dict[str, Any], reference, shapes, tol, seed: int, inputs, eager,
                     rule, residual) -> None:
    """One case per backend, shape and chunking (see the module docstring); ``rule(tol,
    name, shape)`` and ``residual(spec, feed, shape)`` pick the pass rule as parity does."""
    from hvlm_export.runtime import Stream

    spec = reference.spec
    dtype = next(iter(sessions.values())).inputs[0].dtype
    for i, shape in enumerate(shapes):
        feed = inputs(spec, reference.meta["input_shapes"], shape, seed + i, dtype)
        expected = eager(reference.module, spec, feed)["y"]
        x = feed["x"]
        for label, sizes in chunkings(x.shape[1], seed + i).items():
            for backend, session in sessions.items():
                case = Case(backend, {"x": tuple(x.shape), f"chunks:{label}": tuple(sizes[:8])},
                            scale=shape.get("scale", 1.0))
                try:
                    stream, outs, start = Stream(session, x.shape[0]), [], 0
                    for size in sizes:
                        outs.append(stream.feed(x[:, start:start + size]))
                        start += size
                except HvlmExportError as err:
                    case.error = str(err)
                except Exception as err:  # a runtime failing to run is a failed case, never a crash
                    case.error = f"{type(err).__name__}: {str(err)[:300]}"
                else:
                    got = np.concatenate(outs, axis=1).astype(np.float32)
                    case.outputs["y"] = compare(got, expected, rule(tol, "y", shape), residual(spec, feed, shape))
                report.cases.append(case)
                log.info("%s %s: %s", backend, case.shape, "PASSED" if case.passed else "FAILED")
