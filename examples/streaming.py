"""Streaming generation through ONNX Runtime, without torch at run time.

1. export a causal Mamba layer as a *step graph* (x, past.* -> y, present.*) - this needs torch;
2. in a fresh interpreter in which importing torch fails, prefill a prompt and then generate
   token by token with ``hvlm_export.runtime.Stream`` (numpy + onnxruntime only), feeding
   each output back as the next input;
3. check the streamed outputs against the whole-sequence forward graph.

    python examples/streaming.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

GENERATE = textwrap.dedent("""
    import sys
    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "tensorrt"):
                raise ImportError("this process runs without torch: " + name)
    sys.meta_path.insert(0, NoTorch())

    import numpy as np
    from hvlm_export import runtime

    step_path, forward_path = sys.argv[1], sys.argv[2]
    stream = runtime.Stream(runtime.load(step_path), batch_size=1)
    print("state:", {name: array.shape for name, array in stream.state.items()})
    prompt = np.random.default_rng(0).standard_normal((1, 24, 64)).astype(np.float32)
    outputs = [stream.feed(prompt)]                 # prefill: the whole prompt in one step
    token = outputs[-1][:, -1:]
    for _ in range(16):                             # generate: one token per step
        token = stream.feed(token)
        outputs.append(token)
    streamed = np.concatenate(outputs, axis=1)
    print(f"prefilled 24 tokens, generated 16, position {stream.position}")

    # the same 40 inputs through the whole-sequence graph give the same outputs
    inputs = np.concatenate([prompt, streamed[:, 23:-1]], axis=1)
    whole = runtime.load(forward_path).run({"x": inputs})["y"]
    err = float(np.abs(whole - streamed).max() / np.abs(whole).max())
    print(f"max relative difference streamed vs whole sequence: {err:.1e}")
    assert err < 1e-5 and "torch" not in sys.modules
    print("ok: generated without torch")
""")


def main() -> None:
    import hvlm_export as hx

    with tempfile.TemporaryDirectory() as tmp:
        step = hx.export_onnx("mamba", Path(tmp) / "mamba-step.onnx", model_kwargs={"dim": 64, "state_size": 8},
                              mode="step")
        forward = hx.export_onnx("mamba", Path(tmp) / "mamba.onnx", model_kwargs={"dim": 64, "state_size": 8})
        print(f"exported {step.name} and {forward.name}: {hx.validate(step).summary()}")
        result = subprocess.run([sys.executable, "-c", GENERATE, str(step), str(forward)], capture_output=True,
                                text=True, timeout=300)
        print(result.stdout, end="")
        if result.returncode:
            sys.exit(result.stderr)


if __name__ == "__main__":
    main()
