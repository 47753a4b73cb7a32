"""The validation report: per case and output, a readable table and a JSON file."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvlm_export.artifacts import check_writable, write_atomic
from hvlm_export.validators.compare import OutputStats

__all__ = ["Case", "Report"]


def _finite(value: Any) -> Any:
    """``value`` with every NaN/Inf float replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@dataclass
class Case:
    """One backend run at one shape, and the comparison of each of its outputs."""

    backend: str
    shape: dict[str, tuple[int, ...]]
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    error: str | None = None
    #: the inputs' magnitude (standard normal times this)
    scale: float = 1.0

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.outputs) and all(self.outputs.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "shape": {k: list(v) for k, v in self.shape.items()},
            "input_scale": self.scale,
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
        """Worst errors over every case (of ``backend``): the smallest headroom (limit / error,
        > 1 passes), the largest nrmse and max-abs error and the smallest cosine."""
        stats = [s for c in self.cases if backend in (None, c.backend) for s in c.outputs.values()]
        nan = float("nan")
        return {
            "min_headroom": min((s.headroom for s in stats), default=nan),
            "max_nrmse": max((s.nrmse for s in stats), default=nan),
            "max_abs": max((s.max_abs for s in stats), default=nan),
            "min_cosine": min((s.cosine for s in stats), default=nan),
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
        """Write :meth:`to_dict` as strict JSON (unbounded or unmeasured numbers are null)."""
        path = check_writable(path, "report")
        write_atomic(path, (json.dumps(_finite(self.to_dict()), indent=2, allow_nan=False) + "\n").encode())
        return path

    def table(self):
        """A rich Table of every case and output (errors relative to the reference's scale)."""
        from rich.table import Table

        title = f"parity: {self.model} ({self.precision}) vs eager PyTorch fp32 - {Path(self.artifact).name}"
        table = Table(title=title)
        for col in ("backend", "shape", "scale", "out", "nrmse", "gain", "offset", "peak", "cosine", "headroom",
                    "result"):
            table.add_column(col, justify="left" if col in ("backend", "shape", "out", "result") else "right")
        for case in self.cases:
            shape = " ".join(f"{k}=" + "x".join(map(str, v)) for k, v in case.shape.items())
            if case.error:
                table.add_row(case.backend, shape, f"{case.scale:g}", "-", *["-"] * 6,
                              f"[red]ERROR[/red] {case.error[:80]}")
                continue
            for name, s in case.outputs.items():
                verdict = "[green]PASS[/green]" if s.passed else f"[red]FAIL[/red] {s.message}"
                table.add_row(case.backend, shape, f"{case.scale:g}", name, f"{s.nrmse:.1e}", f"{s.gain:+.1e}",
                              f"{s.offset:.1e}", f"{s.peak:.1e}", f"{s.cosine:.6f}", f"{s.headroom:.1f}x", verdict)
        return table

    def summary(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        failed = sum(not c.passed for c in self.cases)
        skipped = "; ".join(f"{b} skipped: {r}" for b, r in self.skipped.items())
        line = f"{status} | {self.model} | {len(self.cases)} cases on {', '.join(self.backends) or 'no backend'}"
        line += f", {failed} failed"
        if self.cases:
            line += f" | worst headroom {self.worst()['min_headroom']:.1f}x"
        return line + (f" | {skipped}" if skipped else "")
