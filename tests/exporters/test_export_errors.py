"""Bad export requests: a typed error, and nothing written."""

from __future__ import annotations

import pytest
import torch

from hvlm_export.errors import ConfigError, ExportError, UnknownMechanismError
from hvlm_export.exporters.onnx_export import export_onnx

SMALL = {"dim": 32, "num_heads": 4}


def test_unknown_mechanism(tmp_path):
    with pytest.raises(UnknownMechanismError, match="valid names are"):
        export_onnx("flash_attention", tmp_path / "m.onnx")


@pytest.mark.parametrize("opset", [7, 17, 30])
def test_bad_opset(tmp_path, opset):
    with pytest.raises(ExportError, match="opset"):
        export_onnx("strided", tmp_path / "m.onnx", opset=opset, model_kwargs=SMALL)


def test_bad_precision_and_scan(tmp_path):
    with pytest.raises(ExportError, match="precision"):
        export_onnx("strided", tmp_path / "m.onnx", precision="int8", model_kwargs=SMALL)
    with pytest.raises(ExportError, match="scan"):
        export_onnx("mamba", tmp_path / "m.onnx", scan="loop", model_kwargs={"dim": 32})


def test_unwritable_and_missing_dirs(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx("strided", tmp_path / "no" / "m.onnx", model_kwargs=SMALL)
    # /proc refuses new files even to root, whatever os.access says
    with pytest.raises(ExportError, match="(not writable|cannot write)"):
        export_onnx("strided", "/proc/m.onnx", model_kwargs=SMALL)
    (tmp_path / "file").write_text("")
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx("strided", tmp_path / "file" / "m.onnx", model_kwargs=SMALL)


def test_wrong_suffix(tmp_path):
    with pytest.raises(ExportError, match=r"\.onnx"):
        export_onnx("strided", tmp_path / "m.txt", model_kwargs=SMALL)


def test_bad_constructor_override(tmp_path):
    with pytest.raises(ExportError, match="cannot build"):
        export_onnx("strided", tmp_path / "m.onnx", model_kwargs={"dim": 30, "num_heads": 4})


def test_bad_checkpoint_leaves_nothing_behind(tmp_path):
    ckpt = tmp_path / "wrong.pt"
    torch.save({"q_proj.weight": torch.zeros(3, 3)}, ckpt)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="does not fit"):
        export_onnx("strided", out, checkpoint=ckpt, model_kwargs=SMALL)
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx("strided", out, checkpoint=tmp_path / "missing.pt", model_kwargs=SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong.pt"], "no partial output may remain"


def test_checkpoint_is_used(tmp_path):
    from hvlm_export.validators.reference import load_reference

    model = __import__("hvlm_export").registry.get("strided").build(SMALL)
    with torch.no_grad():
        model.out_proj.bias.fill_(0.25)
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    path = export_onnx("strided", tmp_path / "m.onnx", checkpoint=tmp_path / "ckpt.pt", model_kwargs=SMALL)
    assert torch.all(load_reference(path).module.out_proj.bias == 0.25)


def test_invalid_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nblocks:\n  - attention_type: sliding\n")
    with pytest.raises(ConfigError, match=r"blocks\[0\]"):
        export_onnx(str(bad), tmp_path / "m.onnx")
