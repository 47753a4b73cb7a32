"""The validation report: per case and output, a readable table and a JSON file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvlm_export.validators.compare import OutputStats

__all__ = ["Case", "Report"]


@dataclass
class Case:
    """One backend run at one shape, and the comparison of each of its outputs."""

    backend: str
    shape: dict[str, tuple[int, ...]]
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.outputs) and all(self.outputs.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "shape": {k: list(v) for k, v in self.shape.items()},
            "passed": self.passed,
            "error": self.error,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
        }


@dataclass
class Report:
    """All cases of a validation run; truthy iff every case passed and something ran."""

    model: str
    artifact: str
    precision: str
    cases: list[Case] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def backends(self) -> list[str]:
        return sorted({c.backend for c in self.cases})

    def worst(self, backend: str | None = None) -> dict[str, float]:
        """Worst max-abs error and cosine over every case (of ``backend``)."""
        stats = [s for c in self.cases if backend in (None, c.backend) for s in c.outputs.values()]
        return {
            "max_abs": max((s.max_abs for s in stats), default=float("nan")),
            "min_cosine": min((s.cosine for s in stats), default=float("nan")),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "artifact": self.artifact,
            "precision": self.precision,
            "passed": self.passed,
            "backends_run": self.backends,
            "backends_skipped": self.skipped,
            "worst": {b: self.worst(b) for b in self.backends},
            "cases": [c.to_dict() for c in self.cases],
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def table(self):
        """A rich Table of every case and output."""
        from rich.table import Table

        title = f"parity: {self.model} ({self.precision}) vs eager PyTorch fp32 - {Path(self.artifact).name}"
        table = Table(title=title)
        for col in ("backend", "shape", "out", "max abs", "max rel", "mean abs", "p99 abs", "cosine", "nan/inf",
                    "atol/rtol", "result"):
            table.add_column(col, justify="right" if col not in ("backend", "shape", "out", "result") else "left")
        for case in self.cases:
            shape = " ".join(f"{k}=" + "x".join(map(str, v)) for k, v in case.shape.items())
            if case.error:
                table.add_row(case.backend, shape, "-", *["-"] * 7, f"[red]ERROR[/red] {case.error[:80]}")
                continue
            for name, s in case.outputs.items():
                verdict = "[green]PASS[/green]" if s.passed else f"[red]FAIL[/red] {s.message}"
                table.add_row(case.backend, shape, name, f"{s.max_abs:.2e}", f"{s.max_rel:.2e}", f"{s.mean_abs:.2e}",
                              f"{s.p99_abs:.2e}", f"{s.cosine:.6f}", f"{s.nan}/{s.inf}", f"{s.atol:.0e}/{s.rtol:.0e}", verdict)
        return table

    def summary(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        failed = sum(not c.passed for c in self.cases)
        skipped = "; ".join(f"{b} skipped: {r}" for b, r in self.skipped.items())
        line = f"{status} | {self.model} | {len(self.cases)} cases on {', '.join(self.backends) or 'no backend'}"
        line += f", {failed} failed"
        return line + (f" | {skipped}" if skipped else "")
