"""Benchmarks (never tests): latency and peak memory vs L, and ONNX Runtime vs eager.

Suites (``hvlm-export bench --suite ...``):

* ``scaling``: every mechanism plus baselines (dense SDPA core, a dense attention module
  with the same projections, the sequential eager scan and the scan op) over sequence
  lengths, on CPU or CUDA. Timing: warm-up, then the median of ``repeats`` runs (CUDA events
  on the GPU); inputs are random normal. Peak memory: ``torch.cuda.max_memory_allocated``
  on the GPU; on the CPU the peak of live tensor bytes seen by a TorchDispatchMode.
* ``onnx``: per mechanism, export time, node count, and ONNX Runtime vs eager latency.

Results go to ``<out>/<suite>-<device>-<dtype>.json`` and ``.md``, plus PNG plots.
"""

from __future__ import annotations

import functools
import json
import math
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["Record", "LiveBytes", "run_scaling", "run_onnx", "write_results"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: the configuration of the issue's GPU targets (B=1, dim 768, 12 heads)
BENCH_KWARGS = {
    "strided": {"dim": 768, "num_heads": 12, "stride": 4},
    "local_global": {"dim": 768, "num_heads": 12, "local_window": 128, "num_global_tokens": 4},
    "cross_memory": {"dim": 768, "num_heads": 12},
    "hierarchical_block": {"attention_type": "local_global", "dim": 768, "num_heads": 12, "local_window": 128},
    "performer": {"dim": 768, "num_heads": 12, "kernel": "softmax", "causal": False},
    "performer_causal": {"dim": 768, "num_heads": 12, "kernel": "softmax", "causal": True},
    "mamba": {"dim": 768, "state_size": 16},
    "linear_block": {"attention_type": "mamba", "dim": 768},
}


@dataclass
class Record:
    name: str
    device: str
    dtype: str
    length: int
    ms: float | None
    peak_mib: float | None
    status: str = "ok"


class LiveBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created while active (CPU memory proxy)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}

    def _release(self, ptr: int) -> None:
        entry = self._refs[ptr]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                ptr, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes == 0:
                    continue
                if ptr in self._refs:
                    self._refs[ptr][0] += 1
                else:
                    self._refs[ptr] = [1, nbytes]
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._release, ptr)
        return out


def _time(fn: Callable[[], object], device: str, repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` after warm-up (CUDA events on the GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _peak_mib(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with LiveBytes() as tracker:
        fn()
    return tracker.peak / 2**20


def _cases(device: str, dtype: torch.dtype, names: Iterable[str]) -> dict[str, Callable[[int], Callable[[], object]]]:
    """name -> (L -> zero-argument callable) for mechanisms and baselines."""
    from hvlm_export.modules import CrossMemoryAttention
    from hvlm_export.ops.selective_scan import selective_scan, selective_scan_ref
    from hvlm_export.registry import REGISTRY

    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    def module_case(factory, kwargs):
        model = factory(**kwargs).to(device=device, dtype=dtype).eval()
        if hasattr(model, "A_log"):
            model.A_log.data = model.A_log.data.float()
        return lambda L: functools.partial(model, rand(1, L, 768))

    cases: dict[str, Callable[[int], Callable[[], object]]] = {}
    for name in names:
        if name in BENCH_KWARGS:
            key = "performer" if name == "performer_causal" else name
            cases[name] = module_case(REGISTRY[key].factory, BENCH_KWARGS[name])
    if "dense_sdpa" in names:
        def sdpa(L):
            q = rand(1, 12, L, 64)
            return functools.partial(F.scaled_dot_product_attention, q, q, q)

        cases["dense_sdpa"] = sdpa
    if "dense_attention" in names:
        cases["dense_attention"] = module_case(CrossMemoryAttention, {"dim": 768, "num_heads": 12})

    def scan_inputs(L, d=1536, n=16):
        return (rand(1, d, L), rand(1, d, L), -torch.rand(d, n, generator=gen).to(device) * 4, rand(1, n, L),
                rand(1, n, L), torch.ones(d, device=device), rand(1, d, L), torch.zeros(d, device=device))

    if "scan_op" in names:
        cases["scan_op"] = lambda L: functools.partial(selective_scan, *scan_inputs(L), delta_softplus=True)
    if "scan_naive" in names:
        cases["scan_naive"] = lambda L: functools.partial(selective_scan_ref, *scan_inputs(L), delta_softplus=True)
    return cases


#: skip cases whose cost explodes (the record says so): (name, device) -> max L
LIMITS = {("scan_naive", "cuda"): 8192, ("scan_naive", "cpu"): 4096, ("strided", "cpu"): 8192,
          ("dense_sdpa", "cpu"): 16384, ("dense_attention", "cpu"): 16384, ("hierarchical_block", "cpu"): 16384}
DEFAULT_NAMES = [*BENCH_KWARGS, "dense_sdpa", "dense_attention", "scan_op", "scan_naive"]


@torch.no_grad()
def run_scaling(device: str, dtype: str, lengths: list[int], names: list[str] | None = None,
                repeats: int = 10) -> list[Record]:
    """Latency and peak memory of every case at every length."""
    from rich.progress import Progress

    names = names or DEFAULT_NAMES
    cases = _cases(device, DTYPES[dtype], names)
    records = []
    with Progress(transient=True) as progress:
        task = progress.add_task(f"bench {device} {dtype}", total=len(cases) * len(lengths))
        for name, make in cases.items():
            for L in lengths:
                progress.update(task, description=f"{name} L={L}")
                if L > LIMITS.get((name, device), math.inf):
                    records.append(Record(name, device, dtype, L, None, None, "skipped: too slow at this L"))
                else:
                    records.append(_measure(name, make, device, dtype, L, repeats))
                progress.advance(task)
    return records


def _measure(name, make, device, dtype, L, repeats) -> Record:
    try:
        fn = make(L)
        ms = _time(fn, device, repeats)
        peak = _peak_mib(fn, device)
        return Record(name, device, dtype, L, ms, peak)
    except torch.OutOfMemoryError:
        if device == "cuda":
            torch.cuda.empty_cache()
        return Record(name, device, dtype, L, None, None, "out of memory")


def run_onnx(names: list[str] | None = None, dim: int = 256, length: int = 2048, repeats: int = 10) -> list[dict]:
    """Export time, node count, ORT vs eager latency per mechanism (CPU, fp32, batch 1)."""
    import tempfile

    import onnx

    from hvlm_export.exporters.onnx import export_onnx
    from hvlm_export.registry import REGISTRY
    from hvlm_export.runtime import load
    from hvlm_export.validators.reference import load_reference

    rows = []
    for name in names or list(REGISTRY):
        spec = REGISTRY[name]
        kwargs = {k: v for k, v in spec.defaults.items() if k not in ("dim", "num_heads")}
        kwargs.update(dim=dim, **({"num_heads": 8} if "num_heads" in spec.defaults else {}))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = export_onnx(name, Path(tmp) / f"{name}.onnx", model_kwargs=kwargs)
            export_s = time.perf_counter() - t0
            model = onnx.load(path)
            nodes = len(model.graph.node)
            body = sum(len(f.node) for f in model.functions)
            module = load_reference(path).module
            session = load(path)
            feed = {n: t.numpy() for n, t in zip(spec.inputs, spec.example_inputs(module, 1, length, mem_len=256), strict=True)}
            args = [torch.from_numpy(feed[n]) for n in spec.inputs]
            with torch.no_grad():
                eager = _time(functools.partial(module, *args), "cpu", repeats)
            ort_ms = _time(functools.partial(session.run, feed), "cpu", repeats)
        rows.append({"name": name, "export_s": export_s, "nodes": nodes, "function_nodes": body,
                     "eager_ms": eager, "ort_ms": ort_ms, "ort_over_eager": ort_ms / eager})
    return rows


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads (torch {torch.__version__})"


def write_results(records: list[Record] | list[dict], out: Path, stem: str, command: str) -> list[Path]:
    """JSON, a markdown table and (for scaling records) latency/memory PNG plots."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) if isinstance(r, Record) else r for r in records]
    meta = {"command": command, "machine": machine(), "date": date.today().isoformat()}
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    md = out / f"{stem}.md"
    md.write_text(_markdown(rows, meta))
    paths = [json_path, md]
    if rows and "length" in rows[0]:
        paths += _plots(rows, out, stem)
    return paths


def _markdown(rows: list[dict], meta: dict) -> str:
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
    names = list(dict.fromkeys(r["name"] for r in rows))
    cell = {(r["name"], r["length"]): r for r in rows}
    lines = ["| mechanism | " + " | ".join(f"L={L}" for L in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for n in names:
        vals = []
        for L in lengths:
            r = cell.get((n, L))
            vals.append("-" if r is None or r["ms"] is None else f"{r['ms']:.3g} ms / {r['peak_mib']:.0f} MiB")
        lines.append(f"| {n} | " + " | ".join(vals) + " |")
    return head + "\n".join(lines) + "\n"


def _plots(rows: list[dict], out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, label in (("ms", "latency (ms)"), ("peak_mib", "peak memory (MiB)")):
        fig, ax = plt.subplots(figsize=(8, 5))
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
        for name in dict.fromkeys(r["name"] for r in rows):
            pts = [(r["length"], r[key]) for r in rows if r["name"] == name and r[key] is not None and r[key] > 0]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(label)
        ax.set_title(f"{stem}: {label} vs L (B=1, dim 768, 12 heads)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        path = out / f"{stem}-{'latency' if key == 'ms' else 'memory'}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
