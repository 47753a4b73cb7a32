"""Model configs: the shipped YAML files build, invalid configs name the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hvlm_export.modules.stack import build_stack, load_config
from hvlm_export.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "attention").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_build_and_run(path):
    model = build_stack(path).eval()
    cfg = model.config
    x = torch.randn(2, 37, cfg.dim)
    y = model(x, torch.randn(2, 5, cfg.dim)) if cfg.memory else model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_shipped_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"sparse_attention", "linear_attention"}


BASE = {"name": "t", "dim": 32, "num_heads": 4, "blocks": [{"attention_type": "strided", "stride": 2}]}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"blocks": [{"attention_type": "nope"}]}, "blocks[0].attention_type"),
        ({"blocks": [{"stride": 2}]}, "blocks[0]"),
        ({"blocks": []}, "blocks"),
        ({"dim": -3}, "dim"),
        ({"colour": "red"}, "colour"),
        ({"memory": True}, "memory"),
        ({"blocks": [{"attention_type": "strided", "stride": 0}]}, "blocks[0]"),
        ({"blocks": [{"attention_type": "strided", "strid": 2}]}, "blocks[0]"),
    ],
)
def test_invalid_config_names_the_field(change, field):
    with pytest.raises(ConfigError) as info:
        build_stack({**BASE, **change})
    assert field in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
