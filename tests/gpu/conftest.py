"""GPU tests: their CPU side (float64 references, CPU modules) runs on one thread per test.

The references step through L one small tensor op at a time, where extra intra-op threads only
add overhead; under ``pytest -n 8`` on the 16-core GPU machine every worker took all 16 cores,
and a test whose float64 scan reference takes about 2 s on one thread (B2D36N16L8192) took
264 s (docs/BENCHMARKS.md, "The unmasked scan"). Not yet timed on the GPU machine. Restored
after each test.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
