"""The serving commands of the CLI: ``triton-repo`` and ``serve`` (docs/SERVING.md)."""

from __future__ import annotations

import argparse

__all__ = ["add_serving_commands"]


def _cmd_triton_repo(args: argparse.Namespace) -> int:
    from hvlm_export.serving import write_repository

    model_dir = write_repository(args.model, args.output, name=args.name, backend=args.backend,
                                 max_batch_size=args.max_batch_size, instances=args.instances, gpus=args.gpus,
                                 max_queue_delay_us=args.max_queue_delay_us)
    print(f"wrote {model_dir}/config.pbtxt and {model_dir}/1/ ({args.backend} backend)")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from hvlm_export.serving.server import serve

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # both end in a clean shutdown of the server
        signal.signal(sig, lambda *_: stop.set())

    def ready(info) -> None:
        print(f"serving {info.model!r}: HTTP {info.http_url}, gRPC {info.grpc_url}, metrics "
              f"http://127.0.0.1:{info.metrics_port}/metrics (Ctrl-C or SIGTERM stops)", flush=True)

    serve(args.model, name=args.name, http_port=args.http_port, grpc_port=args.grpc_port,
          metrics_port=args.metrics_port, max_batch_size=args.max_batch_size,
          max_queue_delay_us=args.max_queue_delay_us, instances=args.instances, stop=stop, on_ready=ready)
    print("stopped", flush=True)
    return 0


def add_serving_commands(sub) -> None:
    """triton-repo and serve."""
    p = sub.add_parser("triton-repo", help="write a Triton Inference Server model repository for an export")
    p.add_argument("model", help="an exported .onnx (an engine from `build` for --backend tensorrt)")
    p.add_argument("-o", "--output", required=True, help="the repository directory (created if missing)")
    p.add_argument("--name", help="model name in the repository (default: the file's stem)")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt", "python"], default="onnxruntime",
                   help="Triton backend (default onnxruntime; python serves it through hvlm_export.runtime)")
    p.add_argument("--max-batch-size", type=int, default=8,
                   help="largest batch Triton forms (default 8; 0 for a graph exported with --static)")
    p.add_argument("--instances", type=int, default=1, help="model instances per device (default 1)")
    p.add_argument("--gpus", type=int, nargs="+", metavar="INDEX",
                   help="GPUs to place instances on (default: instances on the CPU)")
    p.add_argument("--max-queue-delay-us", type=int, default=100,
                   help="how long dynamic batching waits to fill a batch, in microseconds (default 100)")
    p.set_defaults(func=_cmd_triton_repo)

    p = sub.add_parser("serve", help="serve an export on a local Triton Inference Server (127.0.0.1; extra 'serve')")
    p.add_argument("model", help="an exported .onnx (or an engine where TensorRT is installed)")
    p.add_argument("--name", help="model name on the server (default: the file's stem)")
    for flag, port in (("--http-port", 8000), ("--grpc-port", 8001), ("--metrics-port", 8002)):
        p.add_argument(flag, type=int, default=port, help=f"default {port}; 0 picks a free port")
    p.add_argument("--max-batch-size", type=int, default=8, help="largest batch the model runs (default 8)")
    p.add_argument("--max-queue-delay-us", type=int, default=100,
                   help="how long dynamic batching waits to fill a batch, in microseconds (default 100)")
    p.add_argument("--instances", type=int,
                   help="Triton model instances (default 1); a model exported --with-mask pads requests of "
                        "different lengths into one batch either way")
    p.set_defaults(func=_cmd_serve)
