"""A user's own modules (imported by path, several inputs, tuple outputs) and the weights file
(safetensors, hash-checked, never unpickled)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hvlm_export.artifacts import read_metadata
from hvlm_export.errors import ArtifactError, ValidationError
from hvlm_export.exporters.onnx_export import export_onnx
from hvlm_export.validators.parity import validate
from tests.user_modules import Mixer

ROOT = Path(__file__).resolve().parents[2]


def test_import_path_with_two_inputs(tmp_path):
    path = export_onnx("tests.user_modules:Mixer", tmp_path / "mixer.onnx", model_kwargs={"width": 12},
                       example_shapes=["memory=B,M,12", "x=B,L,12"])
    meta = read_metadata(path)
    assert meta["source"] == {"kind": "callable", "target": "tests.user_modules:Mixer", "kwargs": {"width": 12}}
    assert meta["dynamic_axes"]["x"] == {"0": "batch", "1": "seq"}  # JSON keys
    assert meta["dynamic_axes"]["memory"] == {"0": "batch", "1": "mem_seq"}
    assert meta["outputs"] == ["y"]
    report = validate(path)  # rebuilt by importing the callable again
    assert report, report.summary()
    shapes = {(c.shape["x"][1], c.shape["memory"][1]) for c in report.cases}
    assert len(shapes) >= 4 and any(lx != lm for lx, lm in shapes), "x and memory lengths vary independently"


def test_tuple_outputs_from_a_factory(tmp_path):
    path = export_onnx("tests.user_modules:two_heads", tmp_path / "heads.onnx", model_kwargs={"dim": 8})
    assert read_metadata(path)["outputs"] == ["y0", "y1"]
    report = validate(path)
    assert report and {n for c in report.cases for n in c.outputs} == {"y0", "y1"}
    assert {c.shape["x"][0] for c in report.cases} == {1, 3}


def test_example_inputs_are_named_after_the_forward(tmp_path):
    module = Mixer(8)
    x, memory = torch.randn(2, 9, 8), torch.randn(2, 4, 8)
    path = export_onnx(module, tmp_path / "m.onnx", example_inputs=(x, memory))
    assert read_metadata(path)["input_shapes"] == {"x": [2, 9, 8], "memory": [2, 4, 8]}
    with pytest.raises(ValidationError, match="cannot rebuild"):
        validate(path)  # an instance records no import path
    assert validate(module, path)


def test_symbolic_axes_choose_what_is_dynamic(tmp_path):
    path = export_onnx("tests.user_modules:two_heads", tmp_path / "h.onnx", model_kwargs={"dim": 8},
                       example_shapes={"x": [3, "L", 8]})
    assert read_metadata(path)["dynamic_axes"]["x"] == {"1": "seq"}
    report = validate(path)
    assert report and {c.shape["x"][0] for c in report.cases} == {3}, "the batch stays at its example size"


def test_validate_from_another_directory(tmp_path):
    """The CLI imports the callable from the working directory, for export and for validate."""
    (tmp_path / "my_net.py").write_text(textwrap.dedent('''
        import torch
        class Net(torch.nn.Module):
            def __init__(self, width=6):
                super().__init__()
                self.lin = torch.nn.Linear(width, width)
            def forward(self, x):
                return torch.relu(self.lin(x))
    '''))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "hvlm_export.cli", *a], cwd=tmp_path, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    exported = run("export", "my_net:Net", "--set", "width=6", "--example-shape", "x=B,L,6", "-o", "net.onnx")
    assert exported.returncode == 0, exported.stderr
    checked = run("validate", "net.onnx")
    assert checked.returncode == 0 and "PASSED | Net" in checked.stdout, checked.stderr


def test_weights_are_safetensors_and_never_unpickled(exported, monkeypatch):
    path = exported("strided")
    meta = read_metadata(path)
    weights = path.parent / meta["weights"]
    assert weights.suffix == ".safetensors" and len(meta["weights_sha256"]) == 64
    header = int.from_bytes(weights.read_bytes()[:8], "little")
    assert weights.read_bytes()[8:9] == b"{" and header < weights.stat().st_size

    def refuse(*args, **kwargs):
        raise AssertionError("nothing may be unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert validate(path, shapes=[{"batch": 1, "seq": 9}])


@pytest.mark.parametrize("damage", ["flip", "truncate", "pickle"])
def test_damaged_weights_are_refused(exported, tmp_path, damage):
    src = exported("cross_memory")
    meta = read_metadata(src)
    (tmp_path / src.name).write_bytes(src.read_bytes())
    data = bytearray((src.parent / meta["weights"]).read_bytes())
    if damage == "flip":
        data[-3] ^= 0x40  # one weight changed: still valid safetensors
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:  # a pickle that would run code if loaded
        data = bytearray(pickle.dumps(np.ones(3)))
    (tmp_path / meta["weights"]).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the model it sits beside"):
        validate(tmp_path / src.name)
    result = subprocess.run([sys.executable, "-m", "hvlm_export.cli", "validate", str(tmp_path / src.name)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 1 and "SHA-256 differs" in result.stderr and "Traceback" not in result.stderr
