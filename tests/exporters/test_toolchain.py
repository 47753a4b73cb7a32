"""The exported files through the tools TensorRT users run on ONNX files: onnxruntime's
symbolic shape inference, polygraphy, onnx-graphsurgeon, onnxsim. Each keeps the graph
correct, and the processed file still validates (docs/EXPORT.md, "Through the toolchain")."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from hvlm_export.artifacts import read_metadata
from hvlm_export.registry import REGISTRY
from hvlm_export.validators.parity import validate
from hvlm_export.validators.reference import load_reference

NAMES = list(REGISTRY)
STEP = ["strided", "local_global", "performer", "mamba"]  # causal layers with step graphs
CAUSAL = {"causal": True}
QUICK = dict(shapes=[{"batch": 2, "seq": 37}], input_scales=[1.0])


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _step_kwargs(name: str) -> dict:
    return CAUSAL if name != "mamba" else {}


@pytest.mark.parametrize("case", [*NAMES, "mamba-inline", *(f"{n}-step" for n in STEP), "strided-fp16"])
def test_symbolic_shape_inference(exported, case):
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    name, _, variant = case.partition("-")
    if variant == "step":
        path = exported(name, overrides=_step_kwargs(name) or None, mode="step")
    elif variant == "inline":
        path = exported(name, scan="inline")
    else:
        path = exported(name, variant or "fp32")
    inferred = SymbolicShapeInference.infer_shapes(onnx.load(path), auto_merge=True)
    y = _dims(inferred.graph.output[0])
    assert y == ["batch", "chunk" if variant == "step" else "seq", 64], y


@pytest.mark.parametrize("name, mode", [*((n, "forward") for n in NAMES), *((n, "step") for n in STEP)])
def test_initializers_keep_parameter_names(exported, name, mode):
    path = exported(name) if mode == "forward" else exported(name, overrides=_step_kwargs(name) or None, mode="step")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    state = load_reference(path).module.state_dict()
    missing = [k for k in state if k not in inits]
    assert not missing, f"parameters without their name in the graph: {missing}"
    for key, value in state.items():
        np.testing.assert_array_equal(inits[key].astype(np.float32), value.numpy(), err_msg=key)


@pytest.mark.parametrize("mode", ["forward", "step"])
def test_scan_outputs_have_shapes(exported, mode):
    model = onnx.load(exported("mamba") if mode == "forward" else exported("mamba", mode="step"))
    (scan,) = [n for n in model.graph.node if n.op_type == "SelectiveScan"]
    shapes = {v.name: _dims(v) for v in [*model.graph.value_info, *model.graph.output]}
    seq = "chunk" if mode == "step" else "seq"
    assert shapes[scan.output[0]] == ["batch", 128, seq] and shapes[scan.output[1]] == ["batch", 128, 8]


def _copy_weights(src: Path, dst_dir: Path) -> None:
    meta = read_metadata(src)
    shutil.copy(src.parent / meta["weights"], dst_dir / meta["weights"])


def test_graphsurgeon_round_trip_still_validates(exported, tmp_path):
    gs = pytest.importorskip("onnx_graphsurgeon")
    src = exported("mamba")
    out = tmp_path / src.name
    onnx.save(gs.export_onnx(gs.import_onnx(onnx.load(src))), out)
    assert not onnx.load(out).metadata_props, "graphsurgeon drops metadata_props (the doc_string copy stays)"
    _copy_weights(src, tmp_path)
    assert validate(out, **QUICK)


@pytest.mark.parametrize("name", ["mamba", "local_global"])
def test_polygraphy_sanitize_is_quiet_and_validates(exported, tmp_path, name):
    pytest.importorskip("polygraphy")
    tool = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or shutil.which("polygraphy")
    assert tool, "the polygraphy command is installed with the package"
    src = exported(name)
    out = tmp_path / src.name
    result = subprocess.run([tool, "surgeon", "sanitize", "--fold-constants", str(src),
                             "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in (result.stdout + result.stderr).splitlines()
                if line.startswith(("[W]", "[E]")) and "colored" not in line]
    assert not warnings, warnings
    _copy_weights(src, tmp_path)
    assert validate(out, **QUICK)


def test_onnxsim_validates(exported, tmp_path):
    onnxsim = pytest.importorskip("onnxsim")
    src = exported("performer")
    simplified, ok = onnxsim.simplify(onnx.load(src))
    assert ok
    out = tmp_path / src.name
    onnx.save(simplified, out)
    _copy_weights(src, tmp_path)
    assert validate(out, **QUICK)


def test_validate_with_source_when_everything_is_stripped(exported, tmp_path):
    src = exported("cross_memory")
    model = onnx.load(src)
    del model.metadata_props[:]
    model.graph.doc_string = ""
    out = tmp_path / "stripped.onnx"
    onnx.save(model, out)
    with pytest.raises(Exception, match="--source ORIGINAL.onnx"):
        validate(out, **QUICK)
    assert validate(out, source=src, shapes=[{"batch": 2, "seq": 5, "mem": 3}], input_scales=[1.0])
    other = exported("strided")
    with pytest.raises(Exception, match="must be the export this file was made from"):
        validate(out, source=other, **QUICK)
