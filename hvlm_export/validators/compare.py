"""Compare one actual output against its reference: measurements first, verdict second.

The rule is :class:`hvlm_export.registry.Tolerance` (scale-aware; docs/EXPORT.md explains the
numbers). Everything is measured in float64 over the finite values; any NaN/Inf in the actual
output fails, with the count and, when the reference is finite there, the reason.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from hvlm_export.registry import NOISE_SIGMAS, Tolerance

__all__ = ["OutputStats", "compare"]


@dataclass(frozen=True)
class OutputStats:
    """Error statistics of one output, relative to the reference's scale; truthy iff ``passed``.

    ``headroom`` is the smallest limit / value over the checks (> 1 passes; 5 means every
    error is at most a fifth of its limit).
    """

    #: RMS of the reference (of ``y - residual`` for residual blocks): gain and offset's unit
    scale: float
    nrmse: float
    gain: float
    offset: float
    peak: float
    cosine: float
    max_abs: float
    nan: int
    inf: int
    #: limit of each check that ran (gain/offset include the noise allowance)
    limits: dict[str, float] = field(default_factory=dict)
    headroom: float = math.inf
    passed: bool = False
    message: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return asdict(self)


def _failed(message: str, nan: int = 0, inf: int = 0) -> OutputStats:
    n = math.nan
    return OutputStats(n, n, n, n, n, n, n, nan, inf, {}, 0.0, False, message)


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a)))) if a.size else 0.0


def compare(actual: np.ndarray, expected: np.ndarray, tol: Tolerance, residual: np.ndarray | None = None) -> OutputStats:
    """Measure ``actual`` against ``expected`` and apply ``tol``.

    Args:
        actual, expected: same shape, the last axis the channels.
        tol: the pass rule.
        residual: for a residual block, the input it adds back: gain and offset are then
            taken against ``expected - residual`` (what the block computes), while nrmse and
            peak stay relative to the output (its rounding noise scales with the output).
    """
    if actual.shape != expected.shape:
        return _failed(f"shape {actual.shape} != expected {expected.shape}")
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    if not np.isfinite(e).all():
        return _failed("the eager float32 reference is not finite at this input", nan, inf)
    if nan or inf:
        return _failed(f"{nan} NaN / {inf} Inf in the output where eager float32 is finite "
                       "(overflow in the graph's precision?)", nan, inf)
    err = a - e
    # what the graph computes: for a residual block, the branch y - x (gain/offset refer to it)
    ref = e - np.asarray(residual, dtype=np.float64) if residual is not None else e
    out_scale, ref_scale = _rms(e) or 1.0, _rms(ref) or 1.0  # all-zero references: absolute errors
    channels = err.reshape(-1, err.shape[-1]) if err.ndim else err.reshape(1, 1)
    positions = channels.shape[0]
    ref_sq = float(np.sum(ref * ref))
    gain = float(np.sum(err * ref) / ref_sq) if ref_sq > 0 else 0.0
    noise = channels - gain * ref.reshape(channels.shape)
    mean_err = noise.mean(axis=0)
    # rounding noise left once gain and offset are taken out; with one position the offset
    # cannot be told from noise, and the noise estimate keeps it
    sigma = _rms(noise - mean_err) * math.sqrt(positions / (positions - 1)) if positions > 1 else _rms(noise)
    sigma /= ref_scale
    measured = {
        "nrmse": _rms(err) / out_scale,
        "gain": abs(gain),
        "offset": _rms(mean_err) / ref_scale,
        "peak": float(np.max(np.abs(err), initial=0.0) / (np.max(np.abs(e), initial=0.0) or 1.0)),
    }
    limits = {
        "nrmse": tol.nrmse,
        "gain": tol.gain + NOISE_SIGMAS * sigma / math.sqrt(max(err.size, 1)),
        "offset": tol.offset + NOISE_SIGMAS * sigma / math.sqrt(positions),
        "peak": tol.peak,
    }
    if tol.atol is not None or tol.rtol is not None:
        excess = np.abs(err) - (tol.atol or 0.0) - (tol.rtol or 0.0) * np.abs(e)
        measured["elementwise"] = float(np.max(excess, initial=-math.inf)) + 1.0  # passes iff <= 1
        limits["elementwise"] = 1.0
    over = {k: v for k, v in measured.items() if v > limits[k]}
    headroom = min((limits[k] / v if v > 0 else math.inf) for k, v in measured.items() if k != "elementwise")
    denom = float(np.linalg.norm(a) * np.linalg.norm(e))
    return OutputStats(
        scale=ref_scale,
        nrmse=measured["nrmse"],
        gain=gain,
        offset=measured["offset"],
        peak=measured["peak"],
        cosine=float(np.dot(a.ravel(), e.ravel()) / denom) if denom > 0 else float(np.array_equal(a, e)),
        max_abs=float(np.max(np.abs(err), initial=0.0)),
        nan=0,
        inf=0,
        limits=limits,
        headroom=headroom,
        passed=not over,
        message=_explain(over, measured, limits, gain),
    )


def _explain(over: dict[str, float], measured: dict[str, float], limits: dict[str, float], gain: float) -> str:
    if not over:
        return ""
    parts = []
    for key in over:
        if key == "elementwise":
            parts.append("element-wise |error| > atol + rtol*|expected|")
        else:
            parts.append(f"{key} {measured[key]:.1e} > {limits[key]:.1e}")
    if "gain" in over:
        parts.append(f"the output is scaled by {1 + gain:.4f}")
    return "; ".join(parts)
