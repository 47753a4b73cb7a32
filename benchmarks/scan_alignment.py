"""What a length that is not a multiple of 16 costs the CUDA scan and MambaLayer, on a GPU.

The scan kernel's vector loads need rows of (B, D, L) memory that Triton knows are 16-byte
aligned, which it assumes only where L (the row stride) is a multiple of 16 elements; other
lengths run scalar loads (fp16 at L = 8008 too, although its rows are 16-byte aligned). For
each dtype and length (B = 1, D = 1536, N = 16, with z, D, delta_bias and softplus, as
MambaLayer calls it), the device time of one call (a CUDA graph replayed, ``triton.testing``
median) of:

* ``in place``: the op's launcher on L-contiguous (B, D, L) tensors, as MambaLayer passes them;
* ``padded copy``: the five inputs copied into rows padded to a multiple of 16 steps (a view of
  the first L), then the launcher on those views (aligned rows): what padding them would buy
  after paying for the copies;
* ``padded, no copy``: the launcher on such views alone (the inputs already written padded,
  as a producer could write them);

and MambaLayer's device time (fp16, dim 768; a call captured in a CUDA graph) at each length.
Errors of the padded runs against the in-place one are printed (0 expected: same arithmetic).

    python benchmarks/scan_alignment.py [--lengths 8192 8001 8000 8008]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.host_overhead import graph_ms  # noqa: E402
from benchmarks.scan_tuning import DTYPES, inputs  # noqa: E402
from hvlm_export.modules import MambaLayer, cast_module  # noqa: E402
from hvlm_export.ops.selective_scan_triton import selective_scan_triton  # noqa: E402

_ROWS = ("u", "delta", "B", "C", "z")


def padded(t: torch.Tensor) -> torch.Tensor:
    """t (B, rows, L) copied into rows of a multiple of 16 steps; the view of its first L."""
    length = t.shape[2]
    out = t.new_empty(*t.shape[:2], triton.cdiv(length, 16) * 16)[..., :length]
    return out.copy_(t)


def scan_cases(name: str, length: int) -> list[tuple[str, float, float]]:
    inp = inputs(length, dtype=DTYPES[name])
    want, _ = selective_scan_triton(**inp, delta_softplus=True)
    pad = {**inp, **{k: padded(inp[k]) for k in _ROWS}}

    def copy_then_scan():
        return selective_scan_triton(**{**inp, **{k: padded(inp[k]) for k in _ROWS}}, delta_softplus=True)

    rows = []
    for label, fn in (("in place", lambda: selective_scan_triton(**inp, delta_softplus=True)),
                      ("padded copy", copy_then_scan),
                      ("padded, no copy", lambda: selective_scan_triton(**pad, delta_softplus=True))):
        got, _ = fn()
        err = ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()
        rows.append((label, graph_ms(fn), err))
    return rows


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 8001, 8000, 8008])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"], choices=list(DTYPES))
    args = p.parse_args()
    print(f"GPU ms per call (CUDA graph replay), B = 1, {torch.cuda.get_device_name()} (torch {torch.__version__})\n")
    print("| what | dtype | L | ms | error |\n|---|---|---|---|---|")
    for name in args.dtypes:
        for length in args.lengths:
            for label, ms, err in scan_cases(name, length):
                print(f"| scan, {label} | {name} | {length} | {ms:.4f} | {err:.1e} |", flush=True)
    torch.manual_seed(0)
    layer = cast_module(MambaLayer(768).cuda().eval(), torch.float16)
    for length in args.lengths:
        x = torch.randn(1, length, 768, device="cuda", dtype=torch.float16)
        print(f"| MambaLayer (dim 768), eager | fp16 | {length} | {graph_ms(lambda x=x: layer(x)):.4f} | |", flush=True)


if __name__ == "__main__":
    main()
