"""Instruction mix of the scan kernel's chunk loop, compiled for an H100/H200 (sm_90) without a GPU.

Compiles ``scan_kernel`` (hvlm_export/ops/selective_scan_triton.py) with Triton's own ptxas for
``cuda:90``, disassembles it with the nvdisasm Triton ships, finds the loop over chunks (the
longest backward branch) and prints, per configuration: registers, spills, the loop's static
instruction count per (channel, state, step) element a thread handles, and its most frequent
opcodes. Strides along L are specialised to 1, as Triton does for contiguous (B, D, L) tensors at
launch.

Integer arguments are compiled as plain i32 here (the runtime also specialises on divisibility by
16, which lets the tile loads vectorise), so register and spill counts differ from what a launch
compiles (ncu's occupancy is the authority); the loop's instruction mix is the point. Static
counts, not a profile: they show what each element costs to issue.
Needs the ``triton`` package (any machine; no CUDA driver).

Usage: python benchmarks/scan_sass.py [--items 4 8 16] [--warps 4] [--masked]
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

from hvlm_export.ops.scan_aot import compile_ahead
from hvlm_export.ops.selective_scan_triton import ScanConfig, scan_kernel

_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def compile_kernel(items: int, warps: int, buffers: int = 2, maxnreg: int | None = 168, nstate: int = 16,
                   masked: bool = False):
    """The kernel as a launch at L = 8192, D = 1536 compiles it: unmasked (EVEN), unless ``masked``."""
    flags = dict(SOFTPLUS=True, HAS_Z=True, HAS_INIT=False, BLOCK_N=nstate, ITEMS=items, NBUF=buffers, EVEN=not masked)
    return compile_ahead(scan_kernel, "float32", flags, ScanConfig(warps, items, buffers, maxnreg),
                         target=GPUTarget("cuda", 90, 32), unit_l_strides=True)


def loop_body(cubin: bytes) -> tuple[list[str], str]:
    """The instructions of the longest backward-branch loop, and the register / spill line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([str(_BIN / "nvdisasm"), "-c", str(path)], capture_output=True, text=True,
                              check=True).stdout
        usage = subprocess.run([str(_BIN / "cuobjdump"), "-res-usage", str(path)], capture_output=True, text=True,
                               check=True).stdout
    labels, instrs = {}, []
    for line in sass.splitlines():
        if m := re.match(r"^\s*\.(L_x_\d+):", line):
            labels[m.group(1)] = len(instrs)
        elif m := re.match(r"^\s*/\*[0-9a-f]{4}\*/\s+(.*?)\s*;", line):
            instrs.append(m.group(1))
    loops = [(labels[m.group(1)], i) for i, ins in enumerate(instrs)
             if (m := re.search(r"BRA\s+`?\(?\.?(L_x_\d+)", ins)) and labels.get(m.group(1), i) < i]
    start, end = max(loops, key=lambda span: span[1] - span[0])
    resources = re.search(r"REG:\d+ STACK:\d+ SHARED:\d+ LOCAL:\d+", usage)
    return instrs[start:end + 1], resources.group(0) if resources else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--warps", type=int, nargs="+", default=[4])
    parser.add_argument("--masked", action="store_true", help="the masked form (L not a multiple of the chunk)")
    args = parser.parse_args()
    for items in args.items:
        for warps in args.warps:
            body, resources = loop_body(compile_kernel(items, warps, masked=args.masked).asm["cubin"])
            ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", x).split()[0].split(".")[0] for x in body)
            per_element = len(body) / (items * 16)
            print(f"items {items}, warps {warps}: {resources}; chunk loop {len(body)} instructions, "
                  f"{per_element:.2f} per (d, n, t); " + ", ".join(f"{k} {v}" for k, v in ops.most_common(8)))


if __name__ == "__main__":
    main()
