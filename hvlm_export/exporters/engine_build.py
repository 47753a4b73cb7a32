"""ONNX -> TensorRT engine, for TensorRT 10.8+ and 11.x (decided by feature detection).

TensorRT is imported lazily, only by the functions that need it. Profiles, metadata and the
precision decision are plain Python (unit-tested without TensorRT); the build itself follows
the documented Python API:

    Builder -> create_network(flags) -> OnnxParser.parse_from_file -> BuilderConfig
    (workspace pool, optimization profiles, timing cache) -> build_serialized_network

in small steps (``_parse``, ``_configure``, ``_serialize``) over one ``_Build`` that keeps the
parser alive until the engine is serialized.

Precision: TensorRT 11 networks are strongly typed only (no FP16/BF16 builder flags, no
EXPLICIT_BATCH): precision comes from the ONNX types, so export with ``--precision``.
On 10.x the same strongly typed network is used for typed graphs; asking to build an fp32
graph in fp16/bf16 uses the 10.x builder flags when they exist, and is refused otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from hvlm_export.artifacts import SCAN_DOMAIN, SCAN_OP, metadata_of, write_atomic, write_engine_sidecar
from hvlm_export.errors import BuildError
from hvlm_export.plugins.trt import import_tensorrt

__all__ = ["Profile", "build_engine", "default_profiles", "parse_shape_arg"]

log = logging.getLogger(__name__)

#: default dynamic-axis ranges (min, opt, max) when no profile is given; step graphs: 'chunk'
#: (tokens per step: decode 1 .. prefill 512) and 'past' (a key/value cache, empty at the start)
DEFAULT_RANGES = {"batch": (1, 1, 8), "seq": (1, 512, 8192), "mem_seq": (1, 64, 2048), "chunk": (1, 1, 512),
                  "past": (0, 1024, 8192)}
#: axes that may be empty (0) in a profile
_EMPTY_OK = ("past",)


@dataclass(frozen=True)
class Profile:
    """One optimization profile: input name -> (min, opt, max) shapes."""

    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def check(self, inputs: Mapping[str, Sequence[int | str | None]]) -> None:
        """Raise BuildError unless every input is covered with consistent, ordered shapes."""
        missing = sorted(set(inputs) - set(self.shapes))
        unknown = sorted(set(self.shapes) - set(inputs))
        if missing or unknown:
            raise BuildError(f"profile inputs do not match the model: missing {missing}, unknown {unknown}",
                             f"the model's inputs are {sorted(inputs)}.")
        for name, (lo, opt, hi) in self.shapes.items():
            dims = inputs[name]
            for label, shape in (("min", lo), ("opt", opt), ("max", hi)):
                if len(shape) != len(dims):
                    raise BuildError(f"{label} shape {shape} of {name!r} has rank {len(shape)}, the input has {len(dims)}")
                for axis, (got, fixed) in enumerate(zip(shape, dims, strict=True)):
                    if isinstance(fixed, int) and fixed >= 0 and got != fixed:
                        raise BuildError(f"{label} shape of {name!r} has {got} on axis {axis}, which is fixed to {fixed}")
                    if got < (0 if fixed in _EMPTY_OK else 1):
                        raise BuildError(f"{label} shape of {name!r} has size {got} < 1 on axis {axis}")
            if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
                raise BuildError(f"profile of {name!r} needs min <= opt <= max on every axis, got {lo}, {opt}, {hi}")

    def to_json(self) -> dict[str, Any]:
        return {k: [list(s) for s in v] for k, v in self.shapes.items()}


def default_profiles(inputs: Mapping[str, Sequence[int | str | None]]) -> list[Profile]:
    """One profile from the graph's dim names and :data:`DEFAULT_RANGES`."""
    shapes = {}
    for name, dims in inputs.items():
        lo, opt, hi = [], [], []
        for d in dims:
            if isinstance(d, int) and d > 0:
                rng = (d, d, d)
            else:
                rng = DEFAULT_RANGES.get(str(d))
                if rng is None:
                    raise BuildError(f"input {name!r} has a dynamic axis {d!r} with no default range",
                                     "give --min-shapes/--opt-shapes/--max-shapes.")
            lo.append(rng[0])
            opt.append(rng[1])
            hi.append(rng[2])
        shapes[name] = (tuple(lo), tuple(opt), tuple(hi))
    return [Profile(shapes)]


def parse_shape_arg(spec: str) -> dict[str, tuple[int, ...]]:
    """trtexec-style ``x:1x128x768,memory:1x32x768`` -> {name: shape}."""
    out = {}
    for item in spec.split(","):
        name, sep, dims = item.strip().rpartition(":")
        if not sep or not name:
            raise BuildError(f"shape {item!r} must look like name:1x128x768")
        try:
            out[name] = tuple(int(d) for d in dims.split("x"))
        except ValueError as err:
            raise BuildError(f"shape {item!r} must look like name:1x128x768") from err
    return out


def _inspect_onnx(onnx_path: Path) -> tuple[dict[str, list], dict[str, str], bool]:
    """Graph inputs with their dims, hvlm_export metadata, and whether a SelectiveScan node is used."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = {
        v.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim]
        for v in model.graph.input if v.name not in inits
    }
    uses_scan = any(n.domain == SCAN_DOMAIN and n.op_type == SCAN_OP for n in model.graph.node)
    return inputs, metadata_of(model), uses_scan


def _network_flags(trt: ModuleType, graph_precision: str, requested: str | None) -> tuple[int, list[str]]:
    """Creation flags and 10.x builder flags for the precision (see module docstring)."""
    flags, builder_flags = 0, []
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    weak_flags = hasattr(trt.BuilderFlag, "FP16")  # removed in TensorRT 11
    if requested is None or requested == graph_precision:
        if typed is not None and weak_flags:  # 10.x: ask for strong typing explicitly
            flags |= 1 << int(typed)
        return flags, builder_flags
    if graph_precision != "fp32" or requested not in ("fp16", "bf16"):
        raise BuildError(f"cannot build a {graph_precision} graph in {requested}",
                         "re-export the ONNX with --precision instead.")
    if not weak_flags:
        raise BuildError(
            f"this TensorRT ({trt.__version__}) is strongly typed only: precision comes from the ONNX types",
            f"re-export with `hvlm-export export ... --precision {requested}`.",
        )
    builder_flags.append(requested.upper())
    return flags, builder_flags


@dataclass
class _Build:
    """What one build holds on to: the parser stays referenced (with the network) until the
    engine is serialized, as Polygraphy does, since the network can refer to parser-owned
    weights."""

    trt: ModuleType
    logger: Any
    builder: Any
    network: Any = None
    parser: Any = None
    config: Any = None
    cache: Any = None


def _parse(build: _Build, onnx_path: Path, flags: int, plugins: bool) -> None:
    trt = build.trt
    build.network = build.builder.create_network(flags)
    build.parser = trt.OnnxParser(build.network, build.logger)
    override = getattr(getattr(trt, "OnnxParserFlag", None), "ENABLE_PLUGIN_OVERRIDE", None)
    if plugins and override is not None:
        build.parser.set_flag(override)
    if not build.parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(build.parser.num_errors):
            e = build.parser.get_error(i)
            errors.append(f"  - node {e.node()} '{e.node_name()}' ({e.node_operator()}): {e.desc()} [code {e.code()}]")
            log.error("TensorRT parser: %s", errors[-1].strip())
        raise BuildError(
            f"TensorRT could not parse {onnx_path.name} ({len(errors)} errors):\n" + "\n".join(errors),
            "run `hvlm-export lint` on the file; unsupported ops are listed there with the TensorRT versions they need.",
        )


def _configure(build: _Build, profiles: Sequence[Profile], builder_flags: list[str], workspace: int,
               timing_cache: Path | None) -> None:
    trt = build.trt
    build.config = build.builder.create_builder_config()
    build.config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    for name in builder_flags:
        build.config.set_flag(getattr(trt.BuilderFlag, name))
    for p in profiles:
        profile = build.builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.shapes.items():
            profile.set_shape(name, lo, opt, hi)
        build.config.add_optimization_profile(profile)
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        build.cache = build.config.create_timing_cache(blob)
        build.config.set_timing_cache(build.cache, ignore_mismatch=False)


def _serialize(build: _Build, onnx_path: Path) -> bytes:
    plan = build.builder.build_serialized_network(build.network, build.config)
    if plan is None:
        raise BuildError(f"TensorRT failed to build an engine from {onnx_path.name}", "rerun with --verbose for the log.")
    return bytes(plan)


def _check_paths(onnx_path: Path, engine_path: Path) -> None:
    if not onnx_path.is_file():
        raise BuildError(f"{str(onnx_path)!r} does not exist")
    if not engine_path.parent.is_dir():
        raise BuildError(f"output directory {str(engine_path.parent)!r} does not exist")


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    profiles: Sequence[Profile] | None = None,
    precision: str | None = None,
    workspace: int = 4 << 30,
    timing_cache: str | os.PathLike | None = None,
    plugins: bool = True,
    aot_plugins: bool = True,
    verbose: bool = False,
) -> Path:
    """Build a serialized engine from an exported ONNX file; return its path.

    Args:
        onnx_path: the .onnx written by :func:`hvlm_export.export_onnx`.
        engine_path: the engine to write; its sidecar goes beside it as ``<engine>.json``.
        profiles: optimization profiles; default one from the graph's dynamic axes
            (batch 1/1/8, seq 1/512/8192, mem_seq 1/64/2048).
        precision: None (the ONNX types decide) or 'fp16'/'bf16' to build an fp32 graph with
            TensorRT 10.x builder flags (refused on TensorRT 11).
        workspace: workspace memory-pool limit in bytes (default 4 GiB).
        timing_cache: a timing-cache file, read if it exists and written after the build.
        plugins: register the hvlm plugins (needed for graphs with SelectiveScan nodes).
        aot_plugins: prefer the ahead-of-time (Python-free) plugin where TensorRT has it.
        verbose: TensorRT verbose logging.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    _check_paths(onnx_path, engine_path)
    trt = import_tensorrt()
    inputs, meta, uses_scan = _inspect_onnx(onnx_path)
    profiles = list(profiles) if profiles else default_profiles(inputs)
    for p in profiles:
        p.check(inputs)
    registered = []
    if plugins and uses_scan:
        from hvlm_export.plugins import register_plugins

        registered = register_plugins(trt)
    flags, builder_flags = _network_flags(trt, meta.get("precision", "fp32"), precision)
    aot = aot_plugins and "aot" in registered and hasattr(trt.NetworkDefinitionCreationFlag, "PREFER_AOT_PYTHON_PLUGINS")
    if aot:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    build = _Build(trt, logger, trt.Builder(logger))
    _parse(build, onnx_path, flags, bool(registered))
    cache_path = Path(timing_cache) if timing_cache is not None else None
    _configure(build, profiles, builder_flags, workspace, cache_path)
    write_atomic(engine_path, _serialize(build, onnx_path))
    if cache_path is not None:
        write_atomic(cache_path, bytes(build.config.get_timing_cache().serialize()))
    write_engine_sidecar(engine_path, {
        "onnx": onnx_path.name,
        "onnx_dir": str(onnx_path.resolve().parent),
        "onnx_metadata": meta,
        "precision": precision or meta.get("precision", "fp32"),
        "profiles": [p.to_json() for p in profiles],
        "tensorrt_version": trt.__version__,
        "plugins": registered,
        "aot_plugins": aot,
    })
    return engine_path
