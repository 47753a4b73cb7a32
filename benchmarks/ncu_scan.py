"""A program for Nsight Compute: the selective scan op's CUDA kernel at the issue 9 size
(fp32, B = 1, D = 1536, N = 16, L = 8192, gate, D, delta_bias, softplus), launched three times
(the first compiles). Profile the second launch with the hardware counters:

    ncu --clock-control none --kernel-name regex:scan --launch-skip 1 --launch-count 1 \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \\
        --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \\
        python3 benchmarks/ncu_scan.py [--length 8192] [--dtype float32]

(``--clock-control none``: the device machine's clocks are left as they are.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvlm_export.ops.selective_scan import selective_scan  # noqa: E402


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    args = p.parse_args()
    torch.manual_seed(0)
    b, d, n, dtype = 1, 1536, 16, getattr(torch, args.dtype)
    u, delta, z = (torch.randn(b, d, args.length, device="cuda", dtype=dtype) for _ in range(3))
    bc = [torch.randn(b, n, args.length, device="cuda", dtype=dtype) for _ in range(2)]
    a = -torch.rand(d, n, device="cuda") * 4
    for _ in range(3):
        selective_scan(u, delta, a, *bc, torch.ones(d, device="cuda"), z, torch.zeros(d, device="cuda"), True)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
