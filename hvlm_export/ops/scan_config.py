"""Launch configuration of the CUDA selective scan (hvlm_export/ops/selective_scan_triton.py).

Plain Python (no torch, no Triton), so the choices can be checked on any machine.
"""

from __future__ import annotations

__all__ = ["ScanConfig", "default_config", "plugin_config", "MAX_GRID_Y", "SMEM_BUDGET", "LAUNCH_SMEM_LIMIT"]

#: batch rows per launch: the grid's second axis, which CUDA caps at 65535
MAX_GRID_Y = 65535
#: shared memory a program may take for its B / C tiles: three programs per H100 / H200 multiprocessor
SMEM_BUDGET = 72 * 1024
#: dynamic shared memory a kernel launch may take without an opt-in attribute on its function
LAUNCH_SMEM_LIMIT = 48 * 1024


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class ScanConfig:
    """Warps per program (one channel each), steps per lane (``items``: a chunk of L is
    32 * items steps), B / C staging buffers (2: the next chunk's tiles load while this one
    runs) and the register cap per thread (``maxnreg``, None for the compiler's choice)."""

    def __init__(self, warps: int = 4, items: int = 8, buffers: int = 2, maxnreg: int | None = 168) -> None:
        if (warps not in (1, 2, 4, 8) or items not in (1, 2, 4, 8, 16) or buffers not in (1, 2)
                or not (maxnreg is None or (isinstance(maxnreg, int) and 64 <= maxnreg <= 255))):
            raise ValueError(f"ScanConfig: warps in (1, 2, 4, 8), items in (1, 2, 4, 8, 16), buffers 1 or 2, maxnreg "
                             f"None or 64..255; got warps={warps}, items={items}, buffers={buffers}, "
                             f"maxnreg={maxnreg}.")
        self.warps, self.items, self.buffers, self.maxnreg = warps, items, buffers, maxnreg

    def chunk(self) -> int:
        """Steps of L a program scans at a time."""
        return 32 * self.items

    def smem_bytes(self, nstate: int) -> int:
        """Shared memory of the (float32) B and C tiles for N = ``nstate`` states."""
        return 2 * self.buffers * _pow2_at_least(nstate) * self.chunk() * 4

    def __repr__(self) -> str:
        return "ScanConfig(" + ", ".join(f"{k}={v}" for k, v in vars(self).items()) + ")"


def default_config(nstate: int = 16) -> ScanConfig:
    """Four warps, 8 steps per lane (256-step chunks), two B / C buffers, 168 registers: the
    fastest of benchmarks/scan_tuning.py's sweep on an H200 (docs/BENCHMARKS.md). Wider
    states take fewer buffers, then fewer steps per lane, so the tiles stay within
    ``SMEM_BUDGET``; past 16 states the register cap is lifted (the states' carries live in
    registers)."""
    cfg = ScanConfig()
    while cfg.smem_bytes(nstate) > SMEM_BUDGET and (cfg.buffers > 1 or cfg.items > 1):
        if cfg.buffers > 1:
            cfg.buffers = 1
        else:
            cfg.items //= 2
    if _pow2_at_least(nstate) > 16:
        cfg.maxnreg = None
    return cfg


def plugin_config(nstate: int = 16) -> ScanConfig:
    """Launch configuration of the TensorRT AOT plugin's kernel (grid (ceil(D / warps), B)):
    the default with one B / C buffer (and fewer steps per lane where needed), so that the
    program's shared memory, B / C tiles plus 4 KiB for A and layout scratch, stays within
    ``LAUNCH_SMEM_LIMIT``: TensorRT launches an AOT kernel without the function attribute a
    larger amount needs."""
    cfg = default_config(nstate)
    cfg.buffers = 1
    while cfg.smem_bytes(nstate) > LAUNCH_SMEM_LIMIT - 4096 and cfg.items > 1:
        cfg.items //= 2
    if cfg.smem_bytes(nstate) > LAUNCH_SMEM_LIMIT - 4096:
        raise ValueError(f"The AOT SelectiveScan kernel for N={nstate} states needs "
                         f"{(cfg.smem_bytes(nstate) + 4096) // 1024} KiB of shared memory, more than the "
                         f"{LAUNCH_SMEM_LIMIT // 1024} KiB a TensorRT AOT launch gives.\nNote: N <= 128 fits; for larger N "
                         "build with the JIT plugin route (hvlm-export build --no-aot).")
    return cfg
