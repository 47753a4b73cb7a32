"""The shipped example runs end to end on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_attention_examples_run():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "attention_examples.py")], capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "PASSED | mamba" in result.stdout and "stack of 3 blocks: (2, 1024, 256)" in result.stdout


def test_streaming_example_generates_without_torch():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "streaming.py")], capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok: generated without torch" in result.stdout and "position 40" in result.stdout


def test_padded_batch_example_runs():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "padded_batch.py")], capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok: padded batches match each sequence alone" in result.stdout and "'attention_mask', 'int64'" in result.stdout
