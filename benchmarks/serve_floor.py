"""The latency floor of the serving stack: a request's round trip through tritonserver and
pytriton to a Python function that does nothing (returns its input), from one client.

`hvlm-export serve` runs the model behind exactly this path (tritonserver -> pytriton's Python
proxy -> shared memory -> the bound function), so p50(serve) - p50(floor) is what the server's
own code (padding, the runtime call) adds, and p50(floor) is what no change of ours removes.
Same options as serve: 127.0.0.1, dynamic batching with a 100 us queue delay, max batch 8.

    python benchmarks/serve_floor.py [--requests 300] [--length 16 --dim 64]
"""

from __future__ import annotations

import argparse
import platform
import socket
import sysconfig
import time
from datetime import date

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo(requests):
    return [{"y": r["x"]} for r in requests]


def p50_ms(client_module, url: str, x: np.ndarray, requests: int) -> float:
    client = client_module.InferenceServerClient(url)
    inp = client_module.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        client.infer("echo", [inp]).as_numpy("y")
        times.append(time.perf_counter() - start)
    client.close()
    return float(np.median(times[20:])) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    import os

    libdir = sysconfig.get_config_var("LIBDIR") or ""
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)
    ports = [free_port() for _ in range(3)]
    config = TritonConfig(http_address="127.0.0.1", grpc_address="127.0.0.1", http_port=ports[0],
                          grpc_port=ports[1], metrics_port=ports[2], exit_timeout_secs=5)
    x = np.random.default_rng(0).standard_normal((1, args.length, args.dim)).astype(np.float32)
    with Triton(config=config) as triton:
        triton.bind(model_name="echo", infer_func=echo, inputs=[Tensor(name="x", dtype=np.float32, shape=(-1, -1))],
                    outputs=[Tensor(name="y", dtype=np.float32, shape=(-1, -1))],
                    config=ModelConfig(max_batch_size=8, batcher=DynamicBatcher(max_queue_delay_microseconds=100)),
                    strict=True)
        triton.run()
        grpc = p50_ms(grpcclient, f"127.0.0.1:{ports[1]}", x, args.requests)
        http = p50_ms(httpclient, f"127.0.0.1:{ports[0]}", x, args.requests)
    print(f"`python benchmarks/serve_floor.py` on {platform.machine()}, {date.today()}: echo model, x "
          f"{tuple(x.shape)}, one client, {args.requests} requests: p50 gRPC {grpc:.2f} ms, HTTP {http:.2f} ms")


if __name__ == "__main__":
    main()
