"""Benchmarks (never tests): latency, peak memory and the ratio to dense attention, vs L.

Suites (``hvlm-export bench --suite ...``):

* ``scaling``: every registry benchmark case (``ModelSpec.bench``: B = 1, dim 768, 12 heads)
  plus three reference points (the dense SDPA core, the sequential eager scan and the scan op)
  over sequence lengths, on CPU or CUDA, in one or more modes (``COMPILE``): ``eager``,
  ``compiled`` (``torch.compile(module)``, a graph specialised to each length, as a model
  deployed at one length runs), ``compiled-dynamic`` (one graph with symbolic sizes serves
  every length) and ``cudagraphs`` (``mode="reduce-overhead", dynamic=True``, a graph recorded
  per length; CUDA only: no per-kernel launch cost). Every time is also given as a ratio to the dense
  attention module (``cross_memory`` as self-attention: the same four projections, flash
  SDPA) measured in the same run, mode and length. Timing: warm-up (which compiles), then the
  median of ``repeats`` runs (CUDA events on the GPU). Peak memory:
  ``torch.cuda.max_memory_allocated`` on the GPU; on the CPU the peak of live tensor bytes
  seen by a TorchDispatchMode. On CUDA, calls are also split into host and device time (as
  trtexec reports enqueue and GPU compute time): ``host_ms``, the host's enqueue time per call
  in a back-to-back loop, and ``gpu_ms``, the device time of one call (its kernels'
  durations, torch.profiler). A call whose host time exceeds its device time is launch-bound
  at that length: its latency is the host's, whatever its kernels cost.
* ``onnx``: per mechanism, export time, node count, and ONNX Runtime vs eager latency.

Results go to ``<out>/<stem>.json`` and ``.md``, plus PNG plots (latency, memory, ratio).
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hvlm_export.bench_report import check_output_dir, machine
from hvlm_export.errors import BenchError
from hvlm_export.registry import DTYPES, REGISTRY

__all__ = ["Record", "LiveBytes", "run_scaling", "run_onnx", "write_results", "case_names", "BASELINE", "MODES"]

#: the case every ratio is taken against: dense attention with the mechanisms' projections
BASELINE = "cross_memory"
#: torch.compile's arguments per mode (eager: none); static graphs recompile per length (CUDA
#: graphs are recorded per length either way)
COMPILE = {"compiled": {"dynamic": False}, "compiled-dynamic": {"dynamic": True},
           "cudagraphs": {"mode": "reduce-overhead", "dynamic": True}}
MODES = ("eager", *COMPILE)
#: reference points that are not mechanisms (no ratio target): dense SDPA core, scans
EXTRA_CASES = ("dense_sdpa", "scan_op", "scan_naive")
#: skip cases whose cost explodes (the record says so): (name, device) -> max L
LIMITS = {("scan_naive", "cuda"): 8192, ("scan_naive", "cpu"): 4096, ("strided", "cpu"): 8192,
          ("dense_sdpa", "cpu"): 16384, (BASELINE, "cpu"): 16384, ("hierarchical_block", "cpu"): 16384}


@dataclass
class Record:
    name: str
    device: str
    dtype: str
    length: int
    ms: float | None
    peak_mib: float | None
    status: str = "ok"
    mode: str = "eager"
    ratio: float | None = None
    host_ms: float | None = None  # CUDA: enqueue time per call
    gpu_ms: float | None = None  # CUDA: device time per call (its kernels, torch.profiler)
    ratios: list[float] | None = None  # several runs: each run's ratio (``ratio`` is their median)


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


def _host_ms(fn: Callable[[], object], calls: int) -> float:
    """Median host milliseconds per call to enqueue ``fn`` back to back (3 loops, CUDA)."""
    per_call = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - t0) * 1e3 / calls)
        torch.cuda.synchronize()
    return statistics.median(per_call)


def _gpu_ms(fn: Callable[[], object], calls: int) -> float | None:
    """Device milliseconds of one call: the summed durations of the kernels and copies it runs
    (torch.profiler over ``calls`` calls, averaged). None where the profiler sees no device
    activity. (Capturing the call in a CUDA graph would include launch gaps too, but a failed
    capture, e.g. out of memory at long lengths, leaves CUDA's random generator in capture state
    for the rest of the process.)"""
    import warnings

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the profiler's notes about its event buffers
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
    device = [e.device_time_total for e in prof.key_averages()  # kernels, copies, memsets; not ranges
              if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    return sum(device) / calls / 1e3 if device else None


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


def case_names() -> list[str]:
    """Every benchmark case: the registry's (spec.bench) and the extra reference points."""
    return [case for spec in REGISTRY.values() for case in spec.bench] + list(EXTRA_CASES)


def _module_cases(device: str, dtype: torch.dtype, fuse: bool = False) -> dict[str, Callable[[], torch.nn.Module]]:
    from hvlm_export.modules import cast_module, fuse_projections

    def build(spec, overrides):
        model = cast_module(spec.factory(**spec.kwargs(overrides)).to(device), dtype).eval()
        if fuse:
            fuse_projections(model)
        return model

    return {case: functools.partial(build, spec, overrides)
            for spec in REGISTRY.values() for case, overrides in spec.bench.items()}


def _cases(device: str, dtype: torch.dtype, names: Iterable[str], mode: str,
           fuse: bool = False) -> dict[str, Callable[[int], Callable]]:
    """name -> (L -> zero-argument callable) for the selected cases in one mode."""
    from hvlm_export.ops.selective_scan import selective_scan, selective_scan_ref

    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    modules = _module_cases(device, dtype, fuse)
    cases: dict[str, Callable[[int], Callable]] = {}
    for name in names:
        if name in modules:
            model = modules[name]()
            fn = model if mode == "eager" else torch.compile(model, **COMPILE[mode])
            cases[name] = lambda L, fn=fn, dim=model.dim: functools.partial(fn, rand(1, L, dim))
    if mode != "eager":
        return cases  # the extra cases are eager reference points

    def scan_inputs(L, d=1536, n=16):
        return (rand(1, d, L), rand(1, d, L), -torch.rand(d, n, generator=gen).to(device) * 4, rand(1, n, L),
                rand(1, n, L), torch.ones(d, device=device), rand(1, d, L), torch.zeros(d, device=device))

    extra = {
        "dense_sdpa": lambda L: functools.partial(F.scaled_dot_product_attention, *(rand(1, 12, L, 64),) * 3),
        "scan_op": lambda L: functools.partial(selective_scan, *scan_inputs(L), delta_softplus=True),
        "scan_naive": lambda L: functools.partial(selective_scan_ref, *scan_inputs(L), delta_softplus=True),
    }
    cases.update({name: extra[name] for name in names if name in extra})
    return cases


def check_request(device: str, names: list[str], modes: list[str]) -> None:
    """Refuse unknown cases and modes, and CUDA-only requests without CUDA (typed errors)."""
    valid = case_names()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise BenchError(f"unknown benchmark case(s) {unknown}", f"valid names are {', '.join(valid)}.")
    bad_modes = [m for m in modes if m not in MODES]
    if bad_modes:
        raise BenchError(f"unknown mode(s) {bad_modes}", f"valid modes are {', '.join(MODES)}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda needs a CUDA GPU, and torch sees none")
    if "cudagraphs" in modes and device != "cuda":
        raise BenchError("mode 'cudagraphs' needs --device cuda")


@torch.no_grad()
def run_scaling(device: str, dtype: str, lengths: list[int], names: list[str] | None = None,
                repeats: int = 10, modes: Iterable[str] = ("eager",), fuse: bool = False,
                runs: int = 1) -> list[Record]:
    """Latency, peak memory and ratio to the dense module of every case, length and mode;
    ``fuse``: every attention module with fused q / k / v projections (``fuse_projections``).
    Each length measures the cases back to back, the dense module last, so that a ratio's two
    times are near in time; ``runs`` > 1 repeats that, and each record gives the median over
    the runs (the ratio: the median of the runs' ratios, each within one run; ``ratios``: all)."""
    from rich.progress import Progress

    names, modes = list(names or case_names()), list(modes)
    check_request(device, names, modes)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise BenchError(f"runs must be a positive int, got {runs!r}")
    measured = [*(n for n in names if n != BASELINE), BASELINE]  # the dense module last at each length
    by_run: list[list[Record]] = [[] for _ in range(runs)]
    # a static graph per case and length (and what the process compiled before): no silent fall
    # back to eager past Dynamo's limit of graphs per function
    limit = 64 + len(lengths) * len(measured)
    with Progress(transient=True) as progress, torch._dynamo.config.patch(
            recompile_limit=limit, accumulated_recompile_limit=max(256, 4 * limit), fail_on_recompile_limit_hit=True):
        task = progress.add_task(f"bench {device} {dtype}", total=len(measured) * len(lengths) * len(modes) * runs)
        for mode in modes:
            cases = _cases(device, DTYPES[dtype], measured, mode, fuse)
            for records in by_run:
                for L in lengths:
                    for name, make in cases.items():
                        progress.update(task, description=f"{name} {mode} L={L}")
                        if L > LIMITS.get((name, device), math.inf):
                            records.append(Record(name, device, dtype, L, None, None, "skipped: too slow at this L", mode))
                        else:
                            records.append(_measure(name, make, device, dtype, L, repeats, mode))
                        progress.advance(task)
    return _median_runs([_with_ratios(records) for records in by_run])


def _median_runs(runs: list[list[Record]]) -> list[Record]:
    """One record per case, mode and length: the runs' medians (one run: itself)."""
    if len(runs) == 1:
        return runs[0]
    out = []
    for group in zip(*runs, strict=True):
        ok = [r for r in group if r.ms is not None]
        if not ok:
            out.append(group[0])
            continue
        ratios = [r.ratio for r in ok if r.ratio is not None]
        out.append(replace(ok[0], ms=_median(ok, "ms"), peak_mib=max(r.peak_mib for r in ok),
                           ratio=_median(ok, "ratio"), host_ms=_median(ok, "host_ms"),
                           gpu_ms=_median(ok, "gpu_ms"), ratios=ratios or None))
    return out


def _median(records: list[Record], field: str) -> float | None:
    values = [getattr(r, field) for r in records if getattr(r, field) is not None]
    return statistics.median(values) if values else None


def _with_ratios(records: list[Record]) -> list[Record]:
    base = {(r.mode, r.length): r.ms for r in records if r.name == BASELINE}
    for r in records:
        d = base.get((r.mode, r.length))
        r.ratio = r.ms / d if r.ms and d and r.name not in EXTRA_CASES else None
    return records


def _measure(name, make, device, dtype, L, repeats, mode) -> Record:
    try:
        fn = make(L)
        ms = _time(fn, device, repeats)
        peak = _peak_mib(fn, device)
        record = Record(name, device, dtype, L, ms, peak, mode=mode)
        if device == "cuda":
            record.host_ms, record.gpu_ms = _host_ms(fn, max(repeats, 10)), _gpu_ms(fn, 3)
        return record
    except torch.OutOfMemoryError:
        if device == "cuda":
            torch.cuda.empty_cache()
        return Record(name, device, dtype, L, None, None, "out of memory", mode)


def run_onnx(names: list[str] | None = None, dim: int = 256, length: int = 2048, repeats: int = 10) -> list[dict]:
    """Export time, node count, ORT vs eager latency per mechanism (CPU, fp32, batch 1)."""
    import tempfile

    import onnx

    from hvlm_export.exporters.onnx_export import export_onnx
    from hvlm_export.runtime import load
    from hvlm_export.validators.reference import load_reference

    names = check_onnx_names(names)
    rows = []
    for name in names:
        spec = REGISTRY[name]
        kwargs = spec.kwargs({"dim": dim, **({"num_heads": 8} if "num_heads" in spec.defaults else {})})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = export_onnx(name, Path(tmp) / f"{name}.onnx", model_kwargs=kwargs)
            export_s = time.perf_counter() - t0
            model = onnx.load(path)
            module = load_reference(path).module
            session = load(path)
            feed = {n: t.numpy() for n, t in zip(spec.inputs, spec.example_inputs(module, 1, length, mem_len=256), strict=True)}
            args = [torch.from_numpy(feed[n]) for n in spec.inputs]
            with torch.no_grad():
                eager = _time(functools.partial(module, *args), "cpu", repeats)
            ort_ms = _time(functools.partial(session.run, feed), "cpu", repeats)
        rows.append({"name": name, "export_s": export_s, "nodes": len(model.graph.node),
                     "function_nodes": sum(len(f.node) for f in model.functions),
                     "eager_ms": eager, "ort_ms": ort_ms, "ort_over_eager": ort_ms / eager})
    return rows


def check_onnx_names(names: list[str] | None) -> list[str]:
    """The onnx suite's mechanisms (default all); BenchError naming the unknown ones."""
    names = list(names or REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise BenchError(f"unknown mechanism(s) {unknown}", f"valid names are {', '.join(REGISTRY)}.")
    return names


def write_results(records: list[Record] | list[dict], out: Path, stem: str, command: str) -> list[Path]:
    """JSON, a markdown table and (for scaling records) latency/memory/ratio PNG plots."""
    from hvlm_export.bench_report import markdown, plots

    check_output_dir(out)
    rows = [asdict(r) if isinstance(r, Record) else r for r in records]
    meta = {"command": command, "machine": machine(), "date": date.today().isoformat()}
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    md = out / f"{stem}.md"
    md.write_text(markdown(rows, meta))
    paths = [json_path, md]
    if rows and "length" in rows[0]:
        paths += plots(rows, out, stem)
    return paths
