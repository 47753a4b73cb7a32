"""Markdown tables and PNG plots of benchmark results (hvlm_export.bench writes them)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from hvlm_export.errors import BenchError

__all__ = ["markdown", "plots", "machine", "check_output_dir"]


def _cell(r: dict | None) -> str:
    if r is None or r.get("ms") is None:
        return "-" if r is None else r.get("status", "-")
    ratio = f" ({r['ratio']:.2f}x)" if r.get("ratio") is not None else ""
    if r.get("ratios") and len(r["ratios"]) > 1:  # several runs: the median and the runs' range
        ratio = f" ({r['ratio']:.2f}x, {min(r['ratios']):.2f}-{max(r['ratios']):.2f})"
    return f"{r['ms']:.3g} ms{ratio} / {r['peak_mib']:.0f} MiB"


def markdown(rows: list[dict], meta: dict) -> str:
    """One row per case and mode, one column per length: 'ms (ratio to dense) / peak MiB'."""
    head = f"`{meta['command']}` on {meta['machine']}, {meta['date']}\n\n"
    if not rows:
        return head
    if "length" not in rows[0]:
        cols = list(rows[0])
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
        return head + "\n".join(lines) + "\n"
    lengths = sorted({r["length"] for r in rows})
    keys = list(dict.fromkeys((r["name"], r.get("mode", "eager")) for r in rows))
    cell = {(r["name"], r.get("mode", "eager"), r["length"]): r for r in rows}
    lines = ["| case | mode | " + " | ".join(f"L={L}" for L in lengths) + " |", "|---|---|" + "---|" * len(lengths)]
    for name, mode in keys:
        lines.append(f"| {name} | {mode} | " + " | ".join(_cell(cell.get((name, mode, L))) for L in lengths) + " |")
    note = "\nRatios are to the dense attention module (cross_memory) of the same mode and length, same run.\n"
    runs = max((len(r.get("ratios") or ()) for r in rows), default=0)
    if runs > 1:
        note += f"Each cell: the median of {runs} runs; the ratio's median over the runs, then its range.\n"
    return head + "\n".join(lines) + "\n" + note + _split_table(rows, lengths)


def _split_table(rows: list[dict], lengths: list[int]) -> str:
    """CUDA calls: host enqueue time and device time per call, per case and mode, where measured."""
    split = {(r["name"], r.get("mode", "eager"), r["length"]): r for r in rows if r.get("host_ms") is not None}
    if not split:
        return ""
    lines = ["", "Host and GPU time per call (ms): the host's enqueue time in a back-to-back loop / the",
             "durations of the call's kernels (torch.profiler). Host above GPU: launch-bound at that length.", "",
             "| case | mode | " + " | ".join(f"L={L}" for L in lengths) + " |", "|---|---|" + "---|" * len(lengths)]
    for name, mode in dict.fromkeys((n, m) for n, m, _ in split):
        cells = []
        for L in lengths:
            r = split.get((name, mode, L))
            gpu = "-" if r is None or r.get("gpu_ms") is None else f"{r['gpu_ms']:.3g}"
            cells.append("-" if r is None else f"{r['host_ms']:.3g} / {gpu}")
        lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], out: Path, stem: str) -> list[Path]:
    """Latency, peak memory and ratio-to-dense against L (log-log), one line per case and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    series = list(dict.fromkeys((r["name"], r.get("mode", "eager")) for r in rows))
    for key, label, suffix in (("ms", "latency (ms)", "latency"), ("peak_mib", "peak memory (MiB)", "memory"),
                               ("ratio", "time / dense attention module", "ratio")):
        fig, ax = plt.subplots(figsize=(8, 5))
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
        for name, mode in series:
            pts = sorted((r["length"], r[key]) for r in rows  # by L: merged runs come in any order
                         if (r["name"], r.get("mode", "eager")) == (name, mode) and r.get(key) is not None and r[key] > 0)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name if mode == "eager" else f"{name} ({mode})")
        if key == "ratio":
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(label)
        ax.set_title(f"{stem}: {label} vs L (B=1, dim 768, 12 heads)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        path = out / f"{stem}-{suffix}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads (torch {torch.__version__})"


def check_output_dir(out: Path) -> None:
    """Refuse an output directory that cannot be created or written, before any measurement."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"cannot create the output directory {str(out)!r}: {err.strerror}") from err
    if not os.access(out, os.W_OK):
        raise BenchError(f"the output directory {str(out)!r} is not writable", "choose another --out.")
