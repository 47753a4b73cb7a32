"""The ``hvlm-export`` command line: thin commands over the public API.

User errors (HvlmExportError) print one message without a traceback and exit 1; a failed
validation exits 1 after printing its table.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hvlm_export.errors import BenchError, ExportError, HvlmExportError, RuntimeInputError
from hvlm_export.serving.commands import add_serving_commands

__all__ = ["main", "build_parser"]


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def _parse_set(items: Sequence[str]) -> dict:
    """``key=value`` pairs; values are read as YAML scalars (ints, floats, bools, strings)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ExportError(f"--set expects key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from hvlm_export.registry import REGISTRY

    table = Table(title="hvlm-export mechanisms")
    for col in ("name", "inputs", "defaults", "what"):
        table.add_column(col)
    for spec in REGISTRY.values():
        defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
        table.add_row(spec.name, ", ".join(spec.inputs), defaults, spec.summary)
    _console().print(table)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from hvlm_export.exporters.onnx_export import export_onnx

    overrides = _parse_set(args.set)
    model = args.model
    if args.small:
        from hvlm_export.registry import get

        overrides = {**get(model).small, **overrides}
    path = export_onnx(
        model,
        args.output,
        dynamic=not args.static,
        opset=args.opset,
        precision=args.precision,
        scan=args.scan,
        checkpoint=args.checkpoint,
        model_kwargs=overrides or None,
        batch=args.batch,
        seq_len=args.seq_len,
        mode=args.mode,
        seed=args.seed,
        example_shapes=args.example_shape or None,
        with_mask=args.with_mask,
    )
    print(f"exported {model} -> {path} ({args.precision}, opset {args.opset or 'default'}, scan={args.scan}, "
          f"mode={args.mode})")
    if args.lint:
        _print_lint(path, strict=False)
    if args.validate:
        return _run_validate(path, args)
    return 0


def _print_lint(path: Path, strict: bool) -> int:
    from hvlm_export.validators.trt_lint import format_findings, lint_failed, lint_tensorrt

    findings = lint_tensorrt(path)
    print(format_findings(findings, path, strict))
    return 1 if lint_failed(findings, strict) else 0


def _cmd_lint(args: argparse.Namespace) -> int:
    return _print_lint(Path(args.model), args.strict)


def _shapes(args: argparse.Namespace) -> list[dict] | None:
    if not args.seq_lens and not args.batch_sizes and not args.mem_lens:
        return None
    seqs = args.seq_lens or [1, 17, 64]
    batches = args.batch_sizes or [1, 2]
    mems = args.mem_lens or [None]
    shapes = []
    for b, length, m in itertools.product(batches, seqs, mems):
        shapes.append({"batch": b, "seq": length, **({"mem": m} if m is not None else {})})
    return shapes


def _tolerances(args: argparse.Namespace) -> dict | None:
    """--tol KEY=VALUE limits, plus --atol/--rtol as element-wise limits."""
    from hvlm_export.errors import ValidationError

    fields = {}
    for item in args.tol:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            fields[key.strip()] = float(value)
        except ValueError:
            raise ValidationError(f"--tol expects KEY=NUMBER, got {item!r}",
                                  "keys: nrmse, gain, offset, peak, atol, rtol (docs/EXPORT.md, Tolerances).") from None
    if args.atol is not None:
        fields["atol"] = args.atol
    if args.rtol is not None:
        fields["rtol"] = args.rtol
    return fields or None


def _run_validate(path: Path, args: argparse.Namespace) -> int:
    from hvlm_export.artifacts import check_writable
    from hvlm_export.validators.parity import validate

    if args.report:
        check_writable(args.report, "report")  # before the run, not after it
    report = validate(path, shapes=_shapes(args), tolerances=_tolerances(args), backends=args.backends,
                      seed=args.input_seed, input_scales=args.input_scales, source=getattr(args, "source", None))
    console = _console()
    console.print(report.table())
    if args.report:
        report.to_json(args.report)
        console.print(f"report written to {args.report}")
    console.print(report.summary())
    return 0 if report else 1


def _cmd_validate(args: argparse.Namespace) -> int:
    return _run_validate(Path(args.model), args)


def _cmd_run(args: argparse.Namespace) -> int:
    import io

    import numpy as np

    from hvlm_export import runtime
    from hvlm_export.artifacts import check_writable, write_atomic

    out = check_writable(args.outputs, "outputs file")
    session = runtime.load(args.model)
    try:
        with np.load(args.inputs) as data:
            feed = {k: data[k] for k in data.files}
    except FileNotFoundError as err:
        raise RuntimeInputError(f"inputs file {args.inputs!r} does not exist") from err
    except (ValueError, OSError) as err:
        raise RuntimeInputError(f"inputs file {args.inputs!r} is not a readable .npz: {err}") from err
    outputs = session.run(feed)
    buffer = io.BytesIO()
    np.savez(buffer, **outputs)
    write_atomic(out, buffer.getvalue())
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in outputs.items())
    print(f"wrote {out}: {shapes}")
    for name, value in outputs.items():
        value = np.asarray(value)
        bad = int(value.size - np.isfinite(value.astype(np.float32)).sum())
        if bad:
            print(f"hvlm-export run: warning: output {name!r} has {bad} non-finite values of {value.size} "
                  f"({int(np.isnan(value.astype(np.float32)).sum())} NaN): overflow in the graph's precision? "
                  "`hvlm-export validate --input-scales` finds the input range that overflows.", file=sys.stderr)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from hvlm_export.errors import BuildError
    from hvlm_export.exporters.engine_build import Profile, build_engine, parse_shape_arg

    groups = [args.min_shapes, args.opt_shapes, args.max_shapes]
    if any(groups) and not all(len(g) == len(groups[0]) for g in groups):
        raise BuildError("give --min-shapes, --opt-shapes and --max-shapes the same number of times (one per profile)")
    profiles = []
    for lo, opt, hi in zip(*groups, strict=True):
        lo, opt, hi = parse_shape_arg(lo), parse_shape_arg(opt), parse_shape_arg(hi)
        if not set(lo) == set(opt) == set(hi):
            raise BuildError("--min/--opt/--max-shapes of one profile must name the same inputs")
        profiles.append(Profile({n: (lo[n], opt[n], hi[n]) for n in lo}))
    path = build_engine(args.model, args.output, profiles=profiles or None, precision=args.precision,
                        workspace=int(args.workspace * (1 << 30)), timing_cache=args.timing_cache,
                        aot_plugins=not args.no_aot, verbose=args.verbose)
    print(f"built {path} (metadata in {path.name}.json)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from hvlm_export import bench

    command = "hvlm-export bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "hvlm-export bench"
    out = Path(args.out)
    if args.suite == "scaling":
        bench.check_request(args.device, list(args.names or bench.case_names()), list(args.modes))
    else:
        bench.check_onnx_names(args.names)
        if args.fuse_projections:
            raise BenchError("--fuse-projections applies to the scaling suite, not to --suite onnx",
                             "ONNX exports always take the three projections.")
        if args.runs != 1:
            raise BenchError("--runs applies to the scaling suite, not to --suite onnx", "use --repeats.")
    bench.check_output_dir(out)  # before minutes of measuring, not after
    if args.suite == "onnx":
        rows = bench.run_onnx(args.names, dim=args.dim, length=args.lengths[0] if args.lengths else 2048,
                              repeats=args.repeats)
        paths = bench.write_results(rows, out, "onnx-cpu-fp32", command)
    else:
        lengths = args.lengths or [1024, 2048, 4096, 8192, 16384, 32768, 65536]
        records = bench.run_scaling(args.device, args.dtype, lengths, args.names, repeats=args.repeats,
                                    modes=args.modes, fuse=args.fuse_projections, runs=args.runs)
        paths = bench.write_results(records, out, f"scaling-{args.device}-{args.dtype}", command)
    print(paths[1].read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _add_validate_args(p: argparse.ArgumentParser, for_export: bool = False) -> None:
    g = p.add_argument_group("validation")
    g.add_argument("--seq-lens", type=int, nargs="+", help="sequence lengths (default: the mechanism's grid)")
    g.add_argument("--batch-sizes", type=int, nargs="+", help="batch sizes (default: 1 and 3)")
    g.add_argument("--mem-lens", type=int, nargs="+", help="memory lengths for cross-memory models")
    g.add_argument("--tol", action="append", default=[], metavar="KEY=VALUE",
                   help="override one limit of the scale-aware rule: nrmse, gain, offset, peak (relative to the "
                        "reference's magnitude; docs/EXPORT.md), atol, rtol (repeatable)")
    g.add_argument("--atol", type=float, help="add an element-wise |error| <= atol + rtol*|expected| limit")
    g.add_argument("--rtol", type=float, help="relative part of the element-wise limit (with --atol)")
    g.add_argument("--input-scales", type=float, nargs="+", default=[1.0, 30.0], metavar="S",
                   help="input magnitudes to validate at (default 1 30: a large scale catches fp16/bf16 overflow)")
    g.add_argument("--backends", nargs="+", choices=["onnxruntime", "tensorrt"], help="default: all available")
    names = ["--input-seed"] if for_export else ["--input-seed", "--seed"]
    g.add_argument(*names, dest="input_seed", type=int, default=0, help="seed of the random validation inputs (default 0)")
    g.add_argument("--report", help="write the JSON report here")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvlm-export", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered mechanisms")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("export", help="export a mechanism or config to ONNX")
    p.add_argument("model", help="registry name (see `list`), a config .yaml, or your own module as "
                                 "package.module:callable (a class or factory; --set passes its arguments)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, help="ONNX opset, 18..23 (default 20)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="graph types (default fp32)")
    p.add_argument("--static", action="store_true", help="fix batch and sequence to the example shape")
    p.add_argument("--batch", type=int, default=2, help="example batch size (default 2)")
    p.add_argument("--seq-len", type=int, default=48, help="example sequence length (default 48)")
    p.add_argument("--scan", choices=["custom", "inline"], default="custom",
                   help="Mamba scan as one hvlm::SelectiveScan node (default) or inlined standard ops")
    p.add_argument("--checkpoint", help="state_dict .pt to load (strict) before export")
    p.add_argument("--mode", choices=["forward", "step"], default="forward",
                   help="forward (the whole sequence) or step (one streaming step of a causal layer: "
                        "x, past.* -> y, present.*; docs/STREAMING.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="constructor argument of a registry mechanism or of your callable, e.g. --set dim=256 "
                        "(repeatable)")
    p.add_argument("--example-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="an input of your own module, named after its forward's parameter: sizes, letters for "
                        "dynamic axes (B batch, L sequence), e.g. x=B,L,256 (repeat for each input)")
    p.add_argument("--small", action="store_true", help="use the registry's small test size (dim 64)")
    p.add_argument("--with-mask", action="store_true",
                   help="also take padding masks: attention_mask (batch, seq) [and memory_mask], int64, 1 = real token")
    p.add_argument("--no-lint", dest="lint", action="store_false", help="skip the TensorRT-compatibility lint")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the weights (default 0): every precision and mode of one seed is the same model")
    p.add_argument("--validate", action="store_true", help="validate the export right away")
    _add_validate_args(p, for_export=True)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("validate", help="compare an exported model against eager PyTorch")
    p.add_argument("model", help="an exported .onnx (or engine) file")
    p.add_argument("--source", metavar="ORIGINAL.onnx",
                   help="for a processed copy (polygraphy, onnx-graphsurgeon, onnxsim drop the metadata): the export "
                        "it was made from, whose metadata and weights rebuild the reference")
    _add_validate_args(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="run an exported model on inputs from a .npz")
    p.add_argument("model", help="an exported .onnx (or engine) file")
    p.add_argument("--inputs", required=True, help=".npz with one array per graph input")
    p.add_argument("--outputs", required=True, help=".npz to write")
    p.set_defaults(func=_cmd_run)
    _add_tool_commands(sub)
    add_serving_commands(sub)
    return parser


def _add_tool_commands(sub) -> None:
    """build, bench and lint."""
    p = sub.add_parser("build", help="build a TensorRT engine from an exported ONNX file")
    p.add_argument("model", help="an .onnx file written by `export`")
    p.add_argument("-o", "--output", required=True, help="the engine file to write")
    p.add_argument("--precision", choices=["fp16", "bf16"],
                   help="build an fp32 graph in fp16/bf16 (TensorRT 10 only; TensorRT 11 reads the ONNX types)")
    for which in ("min", "opt", "max"):
        p.add_argument(f"--{which}-shapes", action="append", default=[], metavar="NAME:AxBxC[,...]",
                       help=f"{which} shapes of one optimization profile (repeat for more profiles)")
    p.add_argument("--workspace", type=float, default=4.0, help="workspace limit in GiB (default 4)")
    p.add_argument("--timing-cache", help="timing cache file (read if present, written after the build)")
    p.add_argument("--no-aot", action="store_true", help="use the JIT Python plugin even where an AOT one exists")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("bench", help="benchmarks: latency/memory vs L, or ONNX Runtime vs eager")
    p.add_argument("--suite", choices=["scaling", "onnx"], default="scaling", help="what to measure (default scaling)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (onnx suite: the first one)")
    p.add_argument("--names", nargs="+", help="cases to run (default all; see the error for the list)")
    p.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compiled", "compiled-dynamic", "cudagraphs"],
                   help="eager, compiled (torch.compile per length), compiled-dynamic (one graph for every "
                        "length) and/or cudagraphs (CUDA graphs); default eager")
    p.add_argument("--dim", type=int, default=256, help="model width for the onnx suite (default 256)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per case, median reported (default 10)")
    p.add_argument("--runs", type=int, default=1,
                   help="scaling suite: measure everything this many times; each cell gives the medians and "
                        "the range of its ratio over the runs (default 1)")
    p.add_argument("--fuse-projections", action="store_true",
                   help="q / k / v of every attention module (the dense one included) in one GEMM: "
                        "hvlm_export.modules.fuse_projections; eager calls only")
    p.add_argument("--out", default="benchmarks/results", help="output directory")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("lint", help="check an ONNX graph against TensorRT's parser restrictions")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.set_defaults(func=_cmd_lint)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("onnxscript", "onnx_ir", "torch"):  # -v is about hvlm-export's steps, not every library's
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except HvlmExportError as err:
        print(f"hvlm-export {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
