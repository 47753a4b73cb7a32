"""Launch configurations of the CUDA scan, checked without a GPU (hvlm_export/ops/scan_config.py)."""

from __future__ import annotations

import pytest

from hvlm_export.ops.scan_config import MAX_SEGMENTS, ScanConfig, default_config


@pytest.mark.parametrize("kwargs", [dict(warps=3), dict(steps=12), dict(segment=8), dict(segment=100, steps=16),
                                    dict(channels=4), dict(split=3), dict(split=8)])
def test_bad_configurations_are_refused_with_the_valid_choices(kwargs):
    with pytest.raises(ValueError, match="split \\(lanes per channel\\) 1, 2 or 4"):
        ScanConfig(**kwargs)


@pytest.mark.parametrize("nstate, lanes, block_d", [(16, 2, 16), (5, 2, 16), (2, 2, 16), (1, 1, 32), (64, 2, 16)])
def test_the_split_is_capped_at_the_states(nstate, lanes, block_d):
    cfg = ScanConfig(split=2)
    assert cfg.lanes(nstate) == lanes and cfg.block_d(nstate) == block_d
    assert ScanConfig(warps=2, channels=2, split=4).block_d(3) == 32  # 128 channel slots over 4 lanes


def test_segments_count_and_the_grid_limit():
    cfg = ScanConfig(steps=16, segment=128)
    assert [cfg.segments(n) for n in (0, 1, 128, 129)] == [1, 1, 1, 2]
    assert cfg.segments(128 * MAX_SEGMENTS) == MAX_SEGMENTS
    with pytest.raises(ValueError, match="at least 129 steps"):
        cfg.segments(128 * MAX_SEGMENTS + 1)


@pytest.mark.parametrize("length", [1, 100, 2048, 8192, 65536, 10**7, 10**9])
@pytest.mark.parametrize("dim, batch, nstate", [(1536, 1, 16), (64, 1, 16), (768, 8, 1)])
def test_default_config_is_launchable_everywhere(length, dim, batch, nstate):
    cfg = default_config(length, dim, batch, nstate)
    assert cfg.segment % cfg.steps == 0 and cfg.segment >= 32
    assert cfg.segments(length) <= MAX_SEGMENTS  # no ValueError either
    if length <= 128 * MAX_SEGMENTS:
        assert cfg.segment <= 128


def test_default_config_keeps_the_gpu_busy_and_segments_long():
    assert default_config(8192).segment == 128  # 96 channel blocks x 64 segments
    assert default_config(2048, dim=64).segment == 32  # few channels: short segments, more programs
    small = default_config(4096, dim=64)
    assert 32 <= small.segment < 128 and (64 // 16) * small.segments(4096) >= 256
