"""Compare one actual output against its reference: measurements first, verdict second."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hvlm_export.registry import Tolerance

__all__ = ["OutputStats", "compare"]

_REL_EPS = 1e-6  # |expected| floor for relative error, so exact zeros do not divide by 0


@dataclass(frozen=True)
class OutputStats:
    """Error statistics of one output; truthy iff ``passed``."""

    max_abs: float
    max_rel: float
    mean_abs: float
    p99_abs: float
    cosine: float
    nan: int
    inf: int
    #: the smallest atol that would pass with this rtol
    required_atol: float
    atol: float
    rtol: float
    passed: bool
    message: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return asdict(self)


def compare(actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> OutputStats:
    """Element-wise |actual - expected| <= atol + rtol * |expected|, all finite, same shape."""
    if actual.shape != expected.shape:
        nan = float("nan")
        return OutputStats(nan, nan, nan, nan, nan, 0, 0, nan, tol.atol, tol.rtol, False,
                           f"shape {actual.shape} != expected {expected.shape}")
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    diff = np.abs(a - e)
    finite = np.isfinite(diff)
    d = np.where(finite, diff, 0.0)
    denom = np.linalg.norm(a[finite]) * np.linalg.norm(e[finite])
    cosine = float(np.dot(a[finite], e[finite]) / denom) if denom > 0 else float(np.array_equal(a, e))
    required = float(np.max(d - tol.rtol * np.abs(e), initial=0.0))
    ok_elem = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(e)))
    passed = ok_elem and nan == 0 and inf == 0 and bool(np.isfinite(e).all())
    message = "" if passed else ("non-finite values" if (nan or inf) else "exceeds tolerance")
    return OutputStats(
        max_abs=float(d.max(initial=0.0)),
        max_rel=float((d / np.maximum(np.abs(e), _REL_EPS)).max(initial=0.0)),
        mean_abs=float(d.mean()) if d.size else 0.0,
        p99_abs=float(np.quantile(d, 0.99)) if d.size else 0.0,
        cosine=cosine,
        nan=nan,
        inf=inf,
        required_atol=max(required, 0.0),
        atol=tol.atol,
        rtol=tol.rtol,
        passed=passed,
        message=message,
    )
