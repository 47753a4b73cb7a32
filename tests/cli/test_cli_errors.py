"""Mistakes and noise, the way a user meets them: a subprocess, its exit code, its stderr (one
message, no traceback) and no partial file left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*argv, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "hvlm_export.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def fails(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


@pytest.fixture
def not_a_dir(tmp_path) -> Path:
    """A path whose parent is a regular file: unwritable for everyone, root included."""
    (tmp_path / "file").write_text("x")
    return tmp_path / "file"


def test_lint_strict_verdict_matches_exit_code(exported, tmp_path):
    notes_only = cli("lint", "--strict", exported("mamba"))
    assert notes_only.returncode == 0 and "PASSED" in notes_only.stdout and "1 notes" in notes_only.stdout
    model = onnx.load(exported("mamba"))
    for node in model.graph.node:
        if node.op_type == "SelectiveScan":
            keep = [a for a in node.attribute if a.name != "plugin_namespace"]
            del node.attribute[:]
            node.attribute.extend(keep)
    onnx.save(model, tmp_path / "warn.onnx")
    plain = cli("lint", tmp_path / "warn.onnx")
    assert plain.returncode == 0 and "PASSED" in plain.stdout and "1 warnings" in plain.stdout
    strict = cli("lint", "--strict", tmp_path / "warn.onnx")
    assert strict.returncode == 1 and "FAILED (--strict: warnings fail)" in strict.stdout


def test_lint_rejects_an_empty_file(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    fails(cli("lint", tmp_path / "empty.onnx"), "is not an ONNX model (0 bytes, empty")


def test_lint_and_validate_catch_a_dropped_scan_function(exported, tmp_path):
    from onnx import version_converter

    src = exported("mamba")
    converted = version_converter.convert_version(onnx.load(src), 21)
    onnx.save(converted, tmp_path / src.name)
    for f in src.parent.glob(src.stem + ".weights.*"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    lint = cli("lint", tmp_path / src.name)
    assert lint.returncode == 1 and "scan-function" in lint.stdout and "FAILED" in lint.stdout
    result = cli("validate", tmp_path / src.name)
    fails(result, "function body is missing")
    assert "bfloat16" not in result.stderr, "no bf16 hint for an fp32 model"


def test_validate_report_into_a_missing_directory_fails_first(exported, tmp_path):
    result = cli("validate", exported("strided"), "--report", tmp_path / "no" / "r.json")
    fails(result, "does not exist")
    assert "parity:" not in result.stdout, "checked before the run, not after it"


def test_validate_bad_tolerance_flags(exported):
    fails(cli("validate", exported("strided"), "--tol", "nrmse"), "--tol expects KEY=NUMBER")
    fails(cli("validate", exported("strided"), "--tol", "nrsme=1e-3"), "unknown tolerance keys ['nrsme']")
    fails(cli("validate", exported("strided"), "--input-scales", "0"), "input scales must be finite numbers > 0")


def test_run_into_an_unwritable_place(exported, tmp_path, not_a_dir):
    np.savez(tmp_path / "in.npz", x=np.ones((1, 5, 64), np.float32))
    fails(cli("run", exported("strided"), "--inputs", tmp_path / "in.npz", "--outputs", not_a_dir / "o.npz"),
          "does not exist")
    if os.geteuid() != 0:  # root writes into read-only directories
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        fails(cli("run", exported("strided"), "--inputs", tmp_path / "in.npz", "--outputs", ro / "o.npz"),
              "permission denied")


def test_run_warns_on_non_finite_outputs(exported, tmp_path):
    np.savez(tmp_path / "in.npz", x=np.full((1, 33, 64), 300.0, np.float16))
    result = cli("run", exported("mamba", "fp16"), "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "o.npz")
    assert result.returncode == 0 and "non-finite values" in result.stderr and "--input-scales" in result.stderr
    with np.load(tmp_path / "o.npz") as data:
        assert not np.isfinite(data["y"]).all()


def test_run_width_mismatch_hint(exported, tmp_path):
    np.savez(tmp_path / "in.npz", x=np.ones((1, 5, 32), np.float32))
    result = cli("run", exported("strided"), "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "o.npz")
    fails(result, "not a dynamic axis")
    assert "re-export" not in result.stderr and not (tmp_path / "o.npz").exists()


def test_bench_bad_requests(tmp_path, not_a_dir):
    fails(cli("bench", "--suite", "onnx", "--names", "bogus", "--out", tmp_path / "b"), "unknown mechanism(s) ['bogus']")
    fails(cli("bench", "--names", "strided", "--lengths", "64", "--out", not_a_dir / "b"), "file")
    fails(cli("bench", "--suite", "onnx", "--fuse-projections", "--out", tmp_path / "b"), "applies to the scaling suite")
    assert not (tmp_path / "b").exists()


def test_export_is_quiet(tmp_path):
    result = cli("export", "performer", "--small", "-o", tmp_path / "p.onnx")
    assert result.returncode == 0, result.stderr
    for noise in ("torchvision", "Failed to reduce", "symbolic_shapes"):
        assert noise not in result.stderr, noise
    verbose = cli("-v", "export", "strided", "--small", "-o", tmp_path / "s.onnx")
    assert verbose.returncode == 0 and "hvlm_export" in verbose.stderr
    for noise in ("INFO onnxscript", "INFO onnx_ir", "torchvision"):
        assert noise not in verbose.stderr, noise


def test_cross_memory_config_without_memory(tmp_path):
    (tmp_path / "c.yaml").write_text("name: c\ndim: 64\nnum_heads: 4\nblocks:\n  - {attention_type: cross_memory}\n")
    fails(cli("export", tmp_path / "c.yaml", "-o", tmp_path / "c.onnx"), "field 'memory' is false")
    assert not (tmp_path / "c.onnx").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tests.user_modules:DictOut"], "returns a dict: export supports a tensor or a tuple"),
        (["tests.user_modules:DataDependent"], "cannot trace DataDependent"),
        (["tests.user_modules:not_a_module"], "names a int object, not a class or function"),
        (["nope.mod:Net"], "cannot import 'nope.mod'"),
        (["tests.user_modules:Nope"], "has no attribute 'Nope'"),
        (["tests.user_modules:Mixer"], "cannot tell the inputs of Mixer"),
        (["tests.user_modules:Mixer", "--example-shape", "x=B,L,16"], "Mixer.forward needs ['memory'] too"),
        (["tests.user_modules:Mixer", "--example-shape", "x=B,L,16", "--example-shape", "mem=B,M,16"],
         "no parameter named ['mem']"),
        (["tests.user_modules:Mixer", "--example-shape", "x=B,L,-4"], "neither a positive size nor an axis symbol"),
        (["tests.user_modules:TwoHeads", "--set", "width=3"], "unexpected keyword argument 'width'"),
        (["strided", "--example-shape", "x=B,L,16"], "example shapes are for your own modules"),
    ],
)
def test_own_module_mistakes(tmp_path, argv, message):
    result = cli("export", *argv, "-o", tmp_path / "m.onnx")
    fails(result, message)
    assert not list(tmp_path.iterdir()), "no partial file"
    if "DataDependent" in argv[0]:
        assert "def forward(self" not in result.stderr, "no graph dump"
        assert "user_modules.py" in result.stderr and "bug in hvlm-export" not in result.stderr
