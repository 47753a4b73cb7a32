"""How much headroom the scale-aware tolerances leave, and whether a 1%-off graph fails.

For every mechanism, precision (fp32, fp16 in ONNX Runtime; bf16 as the eager module cast to
bfloat16, ONNX Runtime's CPU provider having no bf16 kernels) and input scale (1, 30), over
the default validation grid: the smallest headroom (limit / measured) of a correct graph, and
how many cases fail when the output weight is scaled by 1.01. The numbers behind the
"Tolerances" section of docs/EXPORT.md.

    python benchmarks/tolerance_headroom.py                   # small size (dim 64), ~3 min on 2 cores
    python benchmarks/tolerance_headroom.py --size default    # dim 768, ~15 min
    python benchmarks/tolerance_headroom.py --out docs/benchmarks/tolerances
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch

from hvlm_export import runtime
from hvlm_export.exporters.onnx_export import export_onnx
from hvlm_export.modules import cast_module
from hvlm_export.registry import DTYPES, INPUT_SCALES, REGISTRY
from hvlm_export.validators.compare import compare
from hvlm_export.validators.parity import default_shapes

CHECKS = ("nrmse", "gain", "offset", "peak")


def output_weight(spec) -> str:
    return "mlp.2" if spec.residual else "out_proj"


def feeds(spec, kwargs, dtype, scale):
    for i, shape in enumerate(default_shapes(spec, kwargs, 48)):
        rng = np.random.default_rng(i)
        feed = {}
        for name in spec.inputs:
            length = shape.get("mem", 8) if name == "memory" else shape["seq"]
            x = rng.standard_normal((shape["batch"], length, kwargs["dim"])).astype(np.float32) * scale
            feed[name] = torch.from_numpy(x).to(dtype).float().numpy()  # rounded to the precision
        yield feed


def graphs(spec, reference, wrong, precision, tmp):
    """precision -> callables feed -> output, for the correct and the 1%-off model."""
    if precision == "bf16":
        models = [cast_module(copy.deepcopy(m), torch.bfloat16) for m in (reference, wrong)]

        def run(model):
            return lambda feed: model(*[torch.from_numpy(feed[n]).bfloat16() for n in spec.inputs]).float().numpy()

        return [run(m) for m in models]
    out = []
    for tag, model in (("ok", reference), ("wrong", wrong)):
        path = export_onnx(copy.deepcopy(model), Path(tmp) / f"{spec.name}-{precision}-{tag}.onnx", precision=precision)
        session, np_dtype = runtime.load(path), np.float16 if precision == "fp16" else np.float32
        out.append(lambda feed, s=session, d=np_dtype: s.run({k: v.astype(d) for k, v in feed.items()})["y"].astype(np.float32))
    return out


@torch.no_grad()
def measure(name: str, size: str, tmp: str) -> list[dict]:
    spec = REGISTRY[name]
    kwargs = dict(spec.defaults) if size == "default" else {**spec.defaults, **spec.small}
    torch.manual_seed(0)
    reference = spec.factory(**kwargs).eval()
    wrong = copy.deepcopy(reference)
    dict(wrong.named_modules())[output_weight(spec)].weight.mul_(1.01)
    rows = []
    for precision in ("fp32", "fp16", "bf16"):
        good, bad = graphs(spec, reference, wrong, precision, tmp)
        for scale in INPUT_SCALES:
            tol = (spec.tolerances if scale <= 1 else spec.large_input_tolerances)[precision]
            heads, worst, failed, cases = {k: np.inf for k in CHECKS}, 0.0, 0, 0
            for feed in feeds(spec, kwargs, DTYPES[precision], scale):
                expected = reference(*[torch.from_numpy(feed[n]) for n in spec.inputs]).numpy()
                residual = feed["x"] if spec.residual and scale <= 1 else None
                ok = compare(good(feed), expected, tol, residual)
                for k in CHECKS:
                    value = abs(getattr(ok, k))
                    heads[k] = min(heads[k], ok.limits[k] / value if value > 0 else np.inf)
                worst = max(worst, ok.nrmse)
                failed += not compare(bad(feed), expected, tol, residual)
                cases += 1
            rows.append({"mechanism": name, "precision": precision, "scale": scale, "cases": cases,
                         "headroom": min(heads.values()), "headroom_by_check": heads, "worst_nrmse": worst,
                         "one_percent_failed": failed})
            print(f"{name:18s} {precision} x{scale:<4g} headroom {rows[-1]['headroom']:7.1f}  "
                  f"1%-off failed {failed}/{cases}", flush=True)
    return rows


def markdown(rows: list[dict], size: str) -> str:
    lines = [f"Tolerance headroom ({size} size), {date.today()}, {platform.processor() or platform.machine()}",
             "", "| mechanism | precision | input scale | cases | headroom (min limit/value) | limiting check | "
             "worst nrmse | 1%-off cases failed |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        limiting = min(r["headroom_by_check"], key=r["headroom_by_check"].get)
        lines.append(f"| {r['mechanism']} | {r['precision']} | {r['scale']:g} | {r['cases']} | {r['headroom']:.1f}x | "
                     f"{limiting} | {r['worst_nrmse']:.1e} | {r['one_percent_failed']}/{r['cases']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "default"], default="small")
    parser.add_argument("--names", nargs="+", default=list(REGISTRY), choices=list(REGISTRY))
    parser.add_argument("--out", type=Path, help="directory for tolerances-<size>.json / .md")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for name in args.names for row in measure(name, args.size, tmp)]
    text = markdown(rows, args.size)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"tolerances-{args.size}.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")
        (args.out / f"tolerances-{args.size}.md").write_text(text)


if __name__ == "__main__":
    main()
