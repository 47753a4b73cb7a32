"""The TensorRT AOT plugin's scan kernel against earlier versions of it and the op, on a GPU.

For each dtype and length (B = 1, D = 1536, N = 16, an initial state, no gate: the plugin's
call), median ms per call (``triton.testing.do_bench``) of:

* ``op``: the op's launcher on the same call (``selective_scan_triton``: Triton's JIT, which
  specialises on the sizes and addresses, and a second launch for a masked tail);
* ``jit``: this checkout's ``scan_plugin_kernel`` through Triton's JIT (sizes not specialised);
* ``aot``: the same kernel compiled ahead of time as the plugin compiles it
  (``scan_aot.compile_ahead``: no assumption on sizes or addresses) and launched directly:
  the kernel TensorRT would run;
* ``aot, u misaligned``: ``aot`` with u one element past a 16-byte boundary (a view into a
  larger buffer), which the kernel must detect (its masked form);
* each ``--baseline`` file's ``scan_plugin_kernel`` through the JIT (an earlier commit's
  hvlm_export/ops/selective_scan_triton.py or scan_aot.py);

and the largest relative error of y and the last state of each against the op's.

    git show 64e5081:hvlm_export/ops/selective_scan_triton.py > plugin_old.py
    python benchmarks/plugin_versions.py --baseline plugin_old.py [--lengths 8192 8000 8001]

``--items`` / ``--buffers`` run every version with another configuration than ``plugin_config``'s
(steps per lane, B / C buffers; the plugin keeps under 48 KiB of shared memory).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scan_tuning import DTYPES, bench, inputs  # noqa: E402
from benchmarks.scan_versions import load  # noqa: E402
from hvlm_export.ops.scan_aot import compile_ahead, scan_plugin_kernel  # noqa: E402
from hvlm_export.ops.scan_config import ScanConfig, plugin_config  # noqa: E402
from hvlm_export.ops.selective_scan_triton import selective_scan_triton  # noqa: E402

D, N = 1536, 16


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def cases(name: str, length: int, baselines: dict, cfg) -> list[tuple[str, float, float]]:
    """(version, ms, error against the op) for one dtype and length, configuration ``cfg``."""
    inp = inputs(length, D, N, dtype=DTYPES[name])
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")]
    h0 = torch.randn(1, D, N, device="cuda")
    want_y, want_s = selective_scan_triton(*args[:6], None, args[6], True, initial_state=h0)
    grid = (triton.cdiv(D, cfg.warps), 1)
    flags = dict(SOFTPLUS=True, BLOCK_N=N, ITEMS=cfg.items, NBUF=cfg.buffers)
    aot = compile_ahead(scan_plugin_kernel, str(DTYPES[name]).removeprefix("torch."), flags, cfg)
    flat = torch.empty(args[0].numel() + 1, device="cuda", dtype=args[0].dtype)
    shifted = flat[1:].view_as(args[0]).copy_(args[0])
    rows = [("op", bench(lambda: selective_scan_triton(*args[:6], None, args[6], True, initial_state=h0)), 0.0)]
    runs = {
        "jit": lambda y, s: scan_plugin_kernel[grid](*args, h0, D, length, N, y, s, **flags, num_warps=cfg.warps,
                                                     maxnreg=cfg.maxnreg),
        "aot": lambda y, s: aot[(*grid, 1)](*args, h0, D, length, N, y, s),
        "aot, u misaligned": lambda y, s: aot[(*grid, 1)](shifted, *args[1:], h0, D, length, N, y, s),
    }
    for label, module in baselines.items():
        runs[label] = lambda y, s, k=module.scan_plugin_kernel: k[grid](*args, h0, D, length, N, y, s, **flags,
                                                                        num_warps=cfg.warps, maxnreg=cfg.maxnreg)
    for label, run in runs.items():
        y, s = torch.full_like(want_y, float("nan")), torch.full_like(want_s, float("nan"))
        run(y, s)
        rows.append((label, bench(lambda run=run, y=y, s=s: run(y, s)), max(rel(y, want_y), rel(s, want_s))))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, nargs="*", default=[], help="files defining scan_plugin_kernel")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 8000, 8001])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"], choices=list(DTYPES))
    p.add_argument("--items", type=int, help="steps per lane (default: plugin_config's)")
    p.add_argument("--buffers", type=int, help="B / C staging buffers (default: plugin_config's)")
    args = p.parse_args()
    cfg = plugin_config(N)
    cfg = ScanConfig(cfg.warps, args.items or cfg.items, args.buffers or cfg.buffers, cfg.maxnreg)
    baselines = {f"jit, {path.name}": load(path) for path in args.baseline}
    print(f"ms per call, B = 1, D = {D}, N = {N}, {cfg!r}, {torch.cuda.get_device_name()} "
          f"(torch {torch.__version__}, triton {triton.__version__})\n")
    print("| dtype | L | version | ms | error vs op |\n|---|---|---|---|---|")
    for name in args.dtypes:
        for length in args.lengths:
            for label, ms, err in cases(name, length, baselines, cfg):
                print(f"| {name} | {length} | {label} | {ms:.4f} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
