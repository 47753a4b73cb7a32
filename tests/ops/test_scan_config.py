"""Launch configuration of the CUDA scan, checked without a GPU (hvlm_export/ops/scan_config.py)."""

from __future__ import annotations

import pytest

from hvlm_export.ops.scan_config import LAUNCH_SMEM_LIMIT, SMEM_BUDGET, ScanConfig, default_config, plugin_config


@pytest.mark.parametrize("kwargs", [dict(warps=3), dict(warps=0), dict(items=3), dict(items=32), dict(buffers=0),
                                    dict(buffers=3), dict(maxnreg=32), dict(maxnreg=300), dict(maxnreg=168.0)])
def test_bad_configurations_are_refused_with_the_valid_choices(kwargs):
    with pytest.raises(ValueError, match=r"warps in \(1, 2, 4, 8\), items in \(1, 2, 4, 8, 16\), buffers 1 or 2"):
        ScanConfig(**kwargs)


def test_chunk_and_staging_sizes():
    cfg = ScanConfig(warps=4, items=8, buffers=2)
    assert cfg.chunk() == 256
    assert cfg.smem_bytes(16) == 2 * 2 * 16 * 256 * 4  # B and C, two buffers, float32
    assert cfg.smem_bytes(5) == cfg.smem_bytes(8) == cfg.smem_bytes(16) // 2  # states padded to a power of two


def test_default_config_is_the_measured_one_for_mamba_states():
    cfg = default_config(16)
    assert (cfg.warps, cfg.items, cfg.buffers, cfg.maxnreg) == (4, 8, 2, 168)
    assert default_config(1).items == 8  # fewer states: smaller tiles, same chunk


@pytest.mark.parametrize("nstate", [1, 3, 16, 17, 32, 64, 100, 256])
def test_default_config_fits_shared_memory_for_wide_states(nstate):
    cfg = default_config(nstate)
    assert cfg.smem_bytes(nstate) <= SMEM_BUDGET
    assert (cfg.maxnreg is None) == (nstate > 16)  # unrolled states only up to 16
    shrunk = {32: (1, 8), 64: (1, 4), 100: (1, 2), 256: (1, 1)}  # one buffer first, then shorter chunks
    if nstate in shrunk:
        assert (cfg.buffers, cfg.items) == shrunk[nstate]


@pytest.mark.parametrize("nstate", [1, 5, 16, 32, 64, 128])
def test_plugin_config_needs_no_shared_memory_opt_in(nstate):
    """TensorRT launches the AOT kernel without raising its shared-memory limit (48 KiB)."""
    cfg = plugin_config(nstate)
    assert cfg.buffers == 1 and cfg.smem_bytes(nstate) + 4096 <= LAUNCH_SMEM_LIMIT
    assert (cfg.warps, cfg.items) == ((4, 8) if nstate <= 16 else (4, cfg.items))
    assert plugin_config(16).items == 8 and plugin_config(64).items == 2


def test_plugin_config_refuses_states_that_do_not_fit():
    with pytest.raises(ValueError, match=r"(?s)N=256 states needs 68 KiB .*hvlm-export build --no-aot"):
        plugin_config(256)
