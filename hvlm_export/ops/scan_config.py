"""Launch configurations of the CUDA selective scan (hvlm_export/ops/selective_scan_triton.py).

Plain Python (no torch, no Triton), so the choices can be checked on any machine.
"""

from __future__ import annotations

__all__ = ["ScanConfig", "default_config", "MAX_SEGMENTS"]

#: segments per (channel block, batch row): the launch grid's third axis, which CUDA caps at 65535
MAX_SEGMENTS = 65535
#: programs that keep an H200 busy (about 8 single-warp programs per multiprocessor)
_TARGET_PROGRAMS = 1024


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class ScanConfig:
    """Warps per program, steps per tile, steps per segment, channels per thread and lanes
    per channel (``split``: a channel's N states spread over that many lanes, fewer
    registers per thread). A program holds 32 * warps * channels / split channels."""

    def __init__(self, warps: int = 1, steps: int = 16, segment: int = 256, channels: int = 1,
                 split: int = 1) -> None:
        if (warps not in (1, 2, 4, 8) or steps not in (8, 16, 32) or segment < steps or segment % steps
                or channels not in (1, 2) or split not in (1, 2, 4)):
            raise ValueError(f"ScanConfig: warps in (1, 2, 4, 8), steps in (8, 16, 32), segment a multiple of "
                             f"steps, channels (per thread) 1 or 2, split (lanes per channel) 1, 2 or 4; got "
                             f"warps={warps}, steps={steps}, segment={segment}, channels={channels}, split={split}.")
        self.warps, self.steps, self.segment, self.channels, self.split = warps, steps, segment, channels, split

    def lanes(self, nstate: int) -> int:
        """Lanes per channel for N = ``nstate``: the split, capped at N's power of two."""
        return min(self.split, _pow2_at_least(nstate))

    def block_d(self, nstate: int = 16) -> int:
        """Channels per program for N = ``nstate``."""
        return 32 * self.warps * self.channels // self.lanes(nstate)

    def segments(self, length: int) -> int:
        """Segments of L (at least one); ValueError past the launch grid's limit."""
        count = max(1, -(-length // self.segment))
        if count > MAX_SEGMENTS:
            raise ValueError(f"{self!r} cuts L={length} into {count} segments, more than the launch grid's "
                             f"{MAX_SEGMENTS}.\nNote: use a segment of at least {-(-length // MAX_SEGMENTS)} steps "
                             f"(default_config chooses one).")
        return count

    def __repr__(self) -> str:
        return "ScanConfig(" + ", ".join(f"{k}={v}" for k, v in vars(self).items()) + ")"


def default_config(length: int, dim: int = 1536, batch: int = 1, nstate: int = 16) -> ScanConfig:
    """One warp per program, a channel's states over two lanes, 16-step tiles, 128-step
    segments: within about 2 % of the fastest configuration in benchmarks/scan_tuning.py's
    sweeps on an H200 (docs/BENCHMARKS.md; 256-step segments measured 1 - 2 % faster or
    slower from run to run). Shorter segments (down to 32 steps) where 128 would leave the
    GPU fewer than ~1024 programs; longer ones where L would need more segments than the
    launch grid takes."""
    cfg = ScanConfig(warps=1, steps=16, split=2)
    blocks = -(-dim // cfg.block_d(nstate)) * max(batch, 1)
    wanted = -(-length * blocks // _TARGET_PROGRAMS)  # segment length giving ~_TARGET_PROGRAMS programs
    segment = min(128, max(32, wanted))
    segment = max(segment, -(-length // MAX_SEGMENTS))  # the grid's limit on segments
    cfg.segment = -(-segment // cfg.steps) * cfg.steps
    return cfg
