"""The hvlm-export command line: every command end to end, user errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hvlm_export.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("strided", "local_global", "cross_memory", "hierarchical_block", "performer", "mamba", "linear_block"):
        assert name in out


def test_export_validate_run(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "mamba", "-o", str(out), "--set", "dim=32", "--set", "state_size=4", "--opset", "21",
                 "--seq-len", "20", "--batch", "1", "--validate", "--seq-lens", "3", "33", "--batch-sizes", "1", "2",
                 "--report", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "TensorRT lint" in text and "PASSED | mamba" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and len(report["cases"]) == 8 and {c["input_scale"] for c in report["cases"]} == {1, 30}
    assert {tuple(c["shape"]["x"]) for c in report["cases"]} == {(1, 3, 32), (1, 33, 32), (2, 3, 32), (2, 33, 32)}

    np.savez(tmp_path / "in.npz", x=np.ones((2, 11, 32), np.float32))
    assert main(["run", str(out), "--inputs", str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz") as data:
        assert data["y"].shape == (2, 11, 32)


def test_export_step_graph_and_validate(tmp_path, capsys):
    out = tmp_path / "lg.onnx"
    assert main(["export", "local_global", "-o", str(out), "--small", "--set", "causal=true", "--mode", "step",
                 "--validate", "--seq-lens", "5", "40", "--batch-sizes", "2"]) == 0
    text = capsys.readouterr().out
    assert "mode=step" in text and "PASSED | local_global" in text and "chunks:tokens" in text


def test_bench_rejects_unknown_case_before_measuring(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hvlm_export.cli", "bench", "--names", "bogus", "--out",
                             str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "unknown benchmark case(s) ['bogus']" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "b").exists()


def test_bench_modes_are_the_bench_modes(capsys):
    """The CLI lists its --modes without importing torch; they must be hvlm_export.bench's."""
    from hvlm_export import bench
    from hvlm_export.cli import build_parser

    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["bench"]._actions
                  if a.dest == "modes")
    assert tuple(action.choices) == bench.MODES
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--modes", "compild"])
    assert "invalid choice: 'compild'" in capsys.readouterr().err


def test_flags_reach_the_api(tmp_path, monkeypatch):
    seen = {}

    def fake_export(model, path, **kwargs):
        seen.update(model=model, path=path, **kwargs)
        return path

    monkeypatch.setattr("hvlm_export.exporters.onnx_export.export_onnx", fake_export)
    argv = ["export", "strided", "-o", "m.onnx", "--opset", "19", "--precision", "fp16", "--static", "--batch", "3",
            "--seq-len", "17", "--scan", "inline", "--checkpoint", "c.pt", "--set", "stride=2", "--no-lint",
            "--mode", "step"]
    assert main(argv) == 0
    assert seen == dict(model="strided", path="m.onnx", dynamic=False, opset=19, precision="fp16", scan="inline",
                        checkpoint="c.pt", model_kwargs={"stride": 2}, batch=3, seq_len=17, mode="step", seed=0,
                        example_shapes=None, with_mask=False)
    assert main(["export", "strided", "-o", "m.onnx", "--with-mask", "--no-lint"]) == 0
    assert seen["with_mask"] is True


def test_validate_tolerance_flags(exported, tmp_path):
    path = exported("performer")
    assert main(["validate", str(path), "--seq-lens", "40", "--atol", "0", "--rtol", "0"]) == 1
    assert main(["validate", str(path), "--seq-lens", "40", "--atol", "1e-3"]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "flash", "-o", "{tmp}/m.onnx"], "unknown mechanism 'flash'"),
        (["export", "strided", "-o", "{tmp}/m.onnx", "--opset", "9"], "unsupported opset 9"),
        (["export", "strided", "-o", "{tmp}/nodir/m.onnx"], "does not exist"),
        (["export", "strided", "-o", "{tmp}/m.onnx", "--set", "dim"], "key=value"),
        (["validate", "{tmp}/missing.onnx"], "does not exist"),
        (["validate", "{tmp}/corrupt.onnx"], "not a readable ONNX file"),
        (["run", "{tmp}/corrupt.onnx", "--inputs", "a.npz", "--outputs", "b.npz"], "cannot load"),
        (["lint", "{tmp}/corrupt.onnx"], "not a readable ONNX file"),
        (["build", "{tmp}/corrupt.onnx", "-o", "{tmp}/m.engine"], "TensorRT is not installed"),
    ],
)
def test_user_errors_exit_1_without_traceback(tmp_path, argv, message):
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage")
    argv = [a.format(tmp=tmp_path) for a in argv]
    result = subprocess.run([sys.executable, "-m", "hvlm_export.cli", *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_run_with_wrong_inputs(exported, tmp_path):
    np.savez(tmp_path / "in.npz", wrong=np.ones((1, 3, 64), np.float32))
    result = subprocess.run(
        [sys.executable, "-m", "hvlm_export.cli", "run", str(exported("strided")), "--inputs",
         str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "o.npz")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "missing ['x']" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.npz").exists()
