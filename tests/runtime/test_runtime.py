"""hvlm_export.runtime: the session contract, input checks, and no torch on the ONNX path."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hvlm_export import runtime
from hvlm_export.errors import ArtifactError, RuntimeInputError


@pytest.fixture(scope="module")
def session(exported):
    return runtime.load(exported("cross_memory"))


def _feed(b=2, length=7, mem=3, dim=64, dtype=np.float32):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((b, length, dim)).astype(dtype),
            "memory": rng.standard_normal((b, mem, dim)).astype(dtype)}


def test_contract(session):
    assert session.input_names == ["x", "memory"] and session.output_names == ["y"]
    out = session.run(_feed())
    assert set(out) == {"y"} and out["y"].shape == (2, 7, 64) and out["y"].dtype == np.float32
    assert "x(batch, seq, 64)" in repr(session)


@pytest.mark.parametrize(
    "feed, match",
    [
        ({"x": _feed()["x"]}, "missing \\['memory'\\]"),
        ({**_feed(), "mask": np.zeros(1)}, "unexpected \\['mask'\\]"),
        (_feed(dtype=np.float64), "dtype float64"),
        ({"x": _feed()["x"][0], "memory": _feed()["memory"]}, "rank 2"),
        (_feed(dim=32), "takes 64 there(.|\n)*not a dynamic axis"),
        ({"x": _feed()["x"].tolist(), "memory": _feed()["memory"]}, "numpy array"),
        (_feed(length=0), "empty"),
    ],
)
def test_bad_inputs(session, feed, match):
    with pytest.raises(RuntimeInputError, match=match):
        session.run(feed)


def test_static_export_hint_says_static(exported):
    session = runtime.load(exported("strided", dynamic=False, batch=2, seq_len=24))
    with pytest.raises(RuntimeInputError, match="takes 24 there(.|\n)*--static"):
        session.run({"x": np.zeros((2, 25, 64), np.float32)})
    with pytest.raises(RuntimeInputError, match="not a dynamic axis"):
        session.run({"x": np.zeros((2, 24, 32), np.float32)})


def test_bad_files(tmp_path, exported):
    with pytest.raises(ArtifactError, match="does not exist"):
        runtime.load(tmp_path / "missing.onnx")
    with pytest.raises(ArtifactError, match="cannot tell how to run"):
        (tmp_path / "m.pt").write_bytes(b"x")
        runtime.load(tmp_path / "m.pt")
    good = exported("strided").read_bytes()
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(good[: len(good) // 3])
    with pytest.raises(ArtifactError, match="cannot load"):
        runtime.load(truncated)
    with pytest.raises(ArtifactError, match="not available"):
        runtime.load(exported("strided"), providers=["NoSuchExecutionProvider"])


_BLOCK_TORCH = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "tensorrt"):
                raise ImportError("blocked: " + name)
    sys.meta_path.insert(0, Block())
""")


def _run_without_torch(body: str) -> None:
    """Run ``body`` in a fresh interpreter where importing torch or tensorrt raises; it must
    print 'ok' and leave both out of sys.modules."""
    script = _BLOCK_TORCH + textwrap.dedent(body) + textwrap.dedent("""
        assert "torch" not in sys.modules and "tensorrt" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_onnx_path_imports_neither_torch_nor_tensorrt(exported):
    """Run an export in a fresh interpreter where importing torch or tensorrt raises."""
    _run_without_torch(f"""
        import numpy as np
        import hvlm_export.runtime as rt
        s = rt.load({str(exported("mamba"))!r})
        y = s.run({{"x": np.ones((1, 5, 64), np.float32)}})["y"]
        assert y.shape == (1, 5, 64)
    """)


def test_streaming_imports_neither_torch_nor_tensorrt(exported):
    """Prefill and decode through a step graph with Stream in an interpreter without torch."""
    _run_without_torch(f"""
        import numpy as np
        import hvlm_export.runtime as rt
        stream = rt.Stream(rt.load({str(exported("mamba", mode="step"))!r}), batch_size=1)
        y = stream.feed(np.ones((1, 6, 64), np.float32))
        for _ in range(3):
            y = stream.feed(np.ones((1, 1, 64), np.float32))
        assert y.shape == (1, 1, 64) and stream.position == 9
    """)
