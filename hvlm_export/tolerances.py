"""Parity tolerances: the scale-aware pass rule and its default limits per precision.

Re-exported by :mod:`hvlm_export.registry` (each spec carries its own table); the
reasoning and measurements behind the numbers are in docs/EXPORT.md, "Tolerances".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

__all__ = ["Tolerance", "NOISE_SIGMAS", "TOLERANCES", "LARGE_INPUT_TOLERANCES", "INPUT_SCALES"]


@dataclass(frozen=True)
class Tolerance:
    """Scale-aware pass rule of one output (docs/EXPORT.md, "Tolerances").

    Every limit is relative to the reference's magnitude: the error e = actual - expected is
    split into a *gain* (its projection on the reference: the output scaled by 1 + gain),
    an *offset* (its mean over positions, per channel: a shifted output) and the rest; with
    R the reference's RMS, a case passes when

    - ``nrmse``  >= RMS(e) / R                       (the whole error),
    - ``gain``   >= |<e, ref>| / <ref, ref>          (plus the noise allowance below),
    - ``offset`` >= RMS_channels(mean_positions(e)) / R  (plus the noise allowance),
    - ``peak``   >= max|e| / max|ref|                (one position badly wrong),

    every value is finite, and, when set, |e| <= atol + rtol * |ref| element-wise. Rounding
    noise projects onto the gain and offset directions too, by about its RMS over the square
    root of the number of values averaged; that much (x ``NOISE_SIGMAS``) is allowed on top.
    """

    nrmse: float
    gain: float
    offset: float
    peak: float
    atol: float | None = None
    rtol: float | None = None

    def scaled(self, factor: float) -> Tolerance:
        """Every scale-aware limit times ``factor`` (element-wise limits unchanged)."""
        return replace(self, nrmse=self.nrmse * factor, gain=self.gain * factor, offset=self.offset * factor,
                       peak=self.peak * factor)


#: how many standard deviations of rounding noise the gain and offset limits allow on top
NOISE_SIGMAS = 4.0

# Why these numbers (docs/EXPORT.md, "Tolerances", has the measurements): correct fp32 graphs
# differ from eager by reassociation only, nrmse <= 2e-6 (performer at 30x inputs; ~2e-7
# otherwise); fp16 (unit roundoff 4.9e-4) nrmse <= 6e-4 and bf16 (3.9e-3, eager bf16 as the
# stand-in: ONNX Runtime's CPU provider has no bf16 kernels) <= 7e-3, gains <= 1.1e-3. Each
# limit leaves >= 5x headroom over the worst correct graph at unit inputs, and a graph whose
# output is scaled by 1.01 (1.0001 in fp32) fails in every precision; so does a 1% offset or,
# in fp32/fp16, 1% noise. bf16 rounding of the weights alone shifts channel means by ~0.3%:
# its offset limit is 1.5%.
TOLERANCES = MappingProxyType({
    "fp32": Tolerance(nrmse=5e-5, gain=2e-5, offset=2e-5, peak=5e-4),
    "fp16": Tolerance(nrmse=5e-3, gain=2e-3, offset=2e-3, peak=1e-2),
    "bf16": Tolerance(nrmse=4e-2, gain=6e-3, offset=1.5e-2, peak=6e-2),
})
# At 30x inputs attention logits grow 900x, so a reduced-precision graph is as far from fp32
# as the eager module in that precision is (fp16: nrmse ~1e-2, bf16 ~7e-2, peaks to 0.25
# measured). These cases are there to catch overflow (NaN/Inf, a saturated output): the
# limits are looser, finiteness is not. fp32 keeps its unit-scale rule.
LARGE_INPUT_TOLERANCES = MappingProxyType({
    "fp32": TOLERANCES["fp32"],
    "fp16": Tolerance(nrmse=5e-2, gain=1e-2, offset=1e-2, peak=0.2),
    "bf16": Tolerance(nrmse=0.25, gain=3e-2, offset=5e-2, peak=1.0),
})
#: input scales of the validation grid: unit inputs, and large ones for overflow
INPUT_SCALES = (1.0, 30.0)
