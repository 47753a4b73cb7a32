"""Sequences of different lengths in one batch, eager and exported, with padding masks.

1. right-pad three sequences (29, 13 and 4 tokens) into one batch and run the local/global
   block with ``attention_mask`` (1 = real token): each sequence's outputs equal the ones it
   gets alone, and the padded positions are 0;
2. export the block with its mask input (``with_mask=True``, CLI ``--with-mask``) and run the
   same padded batch through ONNX Runtime (no torch needed at run time);
3. validate the export: the parity grid feeds padded batches too.

    python examples/padded_batch.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

import hvlm_export as hx
from hvlm_export.modules import HierarchicalAttentionBlock

LENGTHS = [29, 13, 4]


def main() -> None:
    torch.manual_seed(0)
    block = HierarchicalAttentionBlock("local_global", dim=64, num_heads=4, local_window=8).eval()
    sequences = [torch.randn(n, 64) for n in LENGTHS]

    # 1. one padded batch and its mask
    x = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)  # (3, 29, 64), zeros after each
    mask = (torch.arange(x.shape[1])[None] < torch.tensor(LENGTHS)[:, None]).long()
    with torch.no_grad():
        y = block(x, attention_mask=mask)
        for i, (seq, n) in enumerate(zip(sequences, LENGTHS, strict=True)):
            alone = block(seq[None])
            err = (y[i, :n] - alone[0]).abs().max().item()
            print(f"sequence {i} ({n} tokens): max difference to running it alone {err:.1e}, "
                  f"padding all zero: {bool((y[i, n:] == 0).all())}")
            assert err < 1e-5 and (y[i, n:] == 0).all()

    # 2. the export takes the mask as an input
    with tempfile.TemporaryDirectory() as tmp:
        path = hx.export_onnx(block, Path(tmp) / "block.onnx", with_mask=True)
        session = hx.runtime.load(path)
        print("graph inputs:", [(t.name, str(t.dtype), t.shape) for t in session.inputs])
        out = session.run({"x": x.numpy(), "attention_mask": mask.numpy()})["y"]
        print(f"ONNX Runtime vs eager on the padded batch: max difference {np.abs(out - y.numpy()).max():.1e}")
        assert np.allclose(out, y.numpy(), atol=1e-5)

        # 3. validation runs padded batches (the reference module is given: it was exported from an instance)
        report = hx.validate(block, path)
        print(report.summary())
        assert report
    print("ok: padded batches match each sequence alone")


if __name__ == "__main__":
    main()
