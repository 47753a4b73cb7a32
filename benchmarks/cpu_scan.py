"""CPU selective scan: the op against the sequential reference, and MambaLayer against dense attention.

All ratios are taken in one process (the machine is shared and noisy), each time the median of
``--repeats`` runs after one warm-up:

* op / ref: ``selective_scan`` (the op, impl="op") over ``selective_scan_ref`` at B=1, D=1536,
  N=16, L=4096, fp32, with z, D, delta_bias and delta_softplus=True; for the kernel the op
  takes here (numba where installed) and for the torch fallback (numba switched off);
* MambaLayer (dim 768) over the dense attention module the project compares against
  (``hvlm_export.bench.BASELINE``), eager, at L=8192, as ``hvlm-export bench`` measures it.

Usage: python benchmarks/cpu_scan.py [--threads 2] [--repeats 5] [--length 4096] [--layer-length 8192]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from unittest import mock

import torch

from hvlm_export.bench import BASELINE, _module_cases
from hvlm_export.modules import MambaLayer
from hvlm_export.ops import selective_scan, selective_scan_ref
from hvlm_export.ops import selective_scan_cpu as cpu


def median_s(fn, repeats: int) -> float:
    fn()  # warm-up (and the numba compilation, or its cache load, on the first call)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scan_inputs(length: int, d: int = 1536, n: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(1, d, length), delta=r(1, d, length), A=-torch.rand(d, n, generator=g) * 4, B=r(1, n, length),
                C=r(1, n, length), D=torch.ones(d), z=r(1, d, length), delta_bias=torch.zeros(d), delta_softplus=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--layer-length", type=int, default=8192)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"numba {'yes' if cpu.numba_available() else 'no'}")
    inp = scan_inputs(args.length)
    with torch.no_grad():
        ref = median_s(lambda: selective_scan_ref(**inp), args.repeats)
        op = median_s(lambda: selective_scan(**inp), args.repeats)
        with mock.patch.object(cpu, "scan_kernel", lambda: None):
            fallback = median_s(lambda: selective_scan(**inp), args.repeats)
        print(f"scan D=1536 N=16 L={args.length}: ref {ref * 1e3:.0f} ms, op {op * 1e3:.0f} ms "
              f"(op/ref {op / ref:.3f}; {'numba' if cpu.numba_available() else 'torch'} kernel), "
              f"torch fallback {fallback * 1e3:.0f} ms (fallback/ref {fallback / ref:.3f})")
        x = torch.randn(1, args.layer_length, 768, generator=torch.Generator().manual_seed(1))
        layer = MambaLayer(768).eval()
        dense = _module_cases("cpu", torch.float32)[BASELINE]()
        mamba_s = median_s(lambda: layer(x), args.repeats)
        dense_s = median_s(lambda: dense(x), args.repeats)
        print(f"MambaLayer L={args.layer_length}: {mamba_s * 1e3:.0f} ms, dense ({BASELINE}) {dense_s * 1e3:.0f} ms, "
              f"ratio {mamba_s / dense_s:.3f}")


if __name__ == "__main__":
    main()
