"""Load test of `hvlm-export serve`: concurrent Triton clients, every answer checked.

Starts the local Triton server (hvlm_export.serving.server.serve, free ports on 127.0.0.1) on a
small Mamba export with padding masks (--no-mask: without; --onnx: your export), then for each
protocol (gRPC, HTTP), each length mix (mixed: lengths drawn from --lengths; same: the first
length only) and each client count N: N threads, each with its own client, send --requests
requests in total (x only). Every response is compared with `runtime.load(MODEL).run` on the
same input alone, unpadded (rel. error <= 1e-5). Reported: throughput, p50 / p99 latency,
errors and mismatches, and the average batch the model ran (with masks: requests per padded
run of the server's batcher; without: requests / executions from Triton's metrics endpoint),
plus the direct `runtime.run` p50 for the same inputs (the server's own overhead is p50 at
N = 1 minus that).

    python benchmarks/serve_load.py --out docs/benchmarks/serving
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from hvlm_export import runtime
from hvlm_export.exporters.onnx_export import export_onnx
from hvlm_export.registry import REGISTRY
from hvlm_export.serving.server import serve

CLIENTS = {"grpc": grpcclient, "http": httpclient}


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf'^{name}{{[^}}]*model="load"[^}}]*}} (\S+)$', text, re.M))


def run_clients(protocol: str, url: str, inputs: list[np.ndarray], clients: int) -> tuple[list[float], list]:
    module = CLIENTS[protocol]
    local = threading.local()

    def one(x: np.ndarray):
        if not hasattr(local, "client"):
            local.client = module.InferenceServerClient(url)
        inp = module.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        start = time.perf_counter()
        try:
            y = local.client.infer("load", [inp]).as_numpy("y")
        except Exception as err:  # counted as an error, the run goes on
            return time.perf_counter() - start, err
        return time.perf_counter() - start, y

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, inputs))
    return [r[0] for r in results], [r[1] for r in results]


def _batches(info, metrics_url: str) -> tuple[float, float]:
    """(requests, model runs) so far: the padding batcher's counts, or Triton's metrics."""
    if info.stats is not None:
        requests, runs, _ = info.stats.snapshot()
        return requests, runs
    return metric(metrics_url, "nv_inference_request_success"), metric(metrics_url, "nv_inference_exec_count")


def _feed(session, x: np.ndarray) -> dict[str, np.ndarray]:
    """x alone, with an all-real mask when the model takes one."""
    if "attention_mask" in {t.name for t in session.inputs}:
        return {"x": x, "attention_mask": np.ones(x.shape[:2], np.int64)}
    return {"x": x}


def measure(args, path: Path, info) -> list[dict]:
    session = runtime.load(path)
    rng = np.random.default_rng(0)
    rows = []
    for mix in ("mixed", "same"):
        lengths = args.lengths if mix == "mixed" else args.lengths[:1]
        inputs = [rng.standard_normal((1, int(rng.choice(lengths)), args.dim), dtype=np.float32)
                  for _ in range(args.requests)]
        want = [session.run(_feed(session, x))["y"] for x in inputs]
        direct = []
        for x in inputs[:50]:
            start = time.perf_counter()
            session.run(_feed(session, x))
            direct.append(time.perf_counter() - start)
        for protocol in args.protocols:
            url = info.grpc_url if protocol == "grpc" else info.http_url
            for clients in args.clients:
                metrics_url = f"http://127.0.0.1:{info.metrics_port}/metrics"
                before = _batches(info, metrics_url)
                start = time.perf_counter()
                latencies, answers = run_clients(protocol, url, inputs, clients)
                wall = time.perf_counter() - start
                after = _batches(info, metrics_url)
                errors = sum(isinstance(a, Exception) for a in answers)
                mismatches = sum(not isinstance(a, Exception) and not np.allclose(a, w, rtol=1e-5, atol=1e-6)
                                 for a, w in zip(answers, want, strict=True))
                executions = after[1] - before[1]
                rows.append({"lengths": mix, "protocol": protocol, "clients": clients, "requests": len(inputs),
                             "throughput_rps": len(inputs) / wall, "p50_ms": float(np.percentile(latencies, 50)) * 1e3,
                             "p99_ms": float(np.percentile(latencies, 99)) * 1e3, "errors": errors,
                             "mismatches": mismatches,
                             "avg_batch": (after[0] - before[0]) / executions if executions else None,
                             "direct_p50_ms": float(np.median(direct)) * 1e3})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", help="an exported model with one input x (default: a small Mamba export)")
    parser.add_argument("--dim", type=int, default=64, help="model width of the default export (default 64)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=256, help="requests per run (default 256)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 24, 32, 48])
    parser.add_argument("--protocols", nargs="+", default=["grpc", "http"], choices=["grpc", "http"])
    parser.add_argument("--instances", type=int, help="Triton model instances (default: serve's)")
    parser.add_argument("--no-mask", dest="mask", action="store_false",
                        help="export the default model without padding masks (Triton batches equal shapes only)")
    parser.add_argument("--out", help="directory for serve_load.json / .md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.onnx) if args.onnx else export_onnx(
            "mamba", Path(tmp) / "mamba.onnx", model_kwargs={**REGISTRY["mamba"].small, "dim": args.dim},
            with_mask=args.mask)
        stop, ready, info = threading.Event(), threading.Event(), []
        thread = threading.Thread(target=serve, args=(path,), daemon=True,
                                  kwargs=dict(name="load", http_port=0, grpc_port=0, metrics_port=0, stop=stop, instances=args.instances,
                                              on_ready=lambda i: (info.append(i), ready.set())))
        thread.start()
        if not ready.wait(120):
            raise SystemExit("the server did not start within 120 s")
        try:
            rows = measure(args, path, info[0])
        finally:
            stop.set()
            thread.join(60)
    header = (f"`python benchmarks/serve_load.py` on {platform.machine()} ({platform.node() or 'host'}), "
              f"{date.today()}; Mamba dim {args.dim}{' with padding masks' if args.mask and not args.onnx else ''}, "
              f"lengths {args.lengths}, {args.requests} requests per run")
    lines = [header, "", "| lengths | protocol | clients | req/s | p50 ms | p99 ms | direct p50 ms | avg batch | "
             "errors | mismatches |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        batch = f"{r['avg_batch']:.2f}" if r["avg_batch"] else "-"
        lines.append(f"| {r['lengths']} | {r['protocol']} | {r['clients']} | {r['throughput_rps']:.0f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['direct_p50_ms']:.2f} | {batch} | {r['errors']} | "
                     f"{r['mismatches']} |")
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "serve_load.json").write_text(json.dumps(rows, indent=1))
        (out / "serve_load.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
