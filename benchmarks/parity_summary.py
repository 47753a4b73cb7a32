"""Worst parity over each mechanism's default validation grid (ONNX Runtime vs eager).

Usage: python benchmarks/parity_summary.py [--out docs/benchmarks]  (CPU; small models as in CI)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import torch

from hvlm_export.exporters.onnx_export import export_onnx
from hvlm_export.registry import REGISTRY
from hvlm_export.validators.parity import validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "attention"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="docs/benchmarks")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    targets = [(n, dict(s.small)) for n, s in REGISTRY.items()] + [(str(p), None) for p in sorted(CONFIGS.glob("*.yaml"))]
    with tempfile.TemporaryDirectory() as tmp:
        for model, kwargs in targets:
            for precision in ("fp32", "fp16"):
                name = Path(model).stem
                torch.manual_seed(0)  # the same random weights every run
                path = export_onnx(model, Path(tmp) / f"{name}-{precision}.onnx", model_kwargs=kwargs, precision=precision)
                report = validate(path)
                worst = report.worst("onnxruntime")
                rows.append({"model": name, "precision": precision, "cases": len(report.cases), "passed": bool(report),
                             "worst_max_abs": worst["max_abs"], "min_cosine": worst["min_cosine"]})
                print(f"| {name} | {precision} | {len(report.cases)} | {'PASS' if report else 'FAIL'} | "
                      f"{worst['max_abs']:.2e} | {worst['min_cosine']:.9f} |", flush=True)
    Path(args.out, "parity-cpu.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
