"""The padding batcher of ``serve`` (hvlm_export.serving.batching) against a recording session:
padded batches with the right masks, answers cut back to each request, batch limits, errors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from hvlm_export.serving.batching import PaddingBatcher


class Recorder:
    """A session whose y is x masked (plus memory's masked mean), recording every batch."""

    def __init__(self, memory: bool = False, fail_on: int | None = None) -> None:
        names = ["x", "memory", "attention_mask", "memory_mask"] if memory else ["x", "attention_mask"]
        self.inputs = [SimpleNamespace(name=n) for n in names]
        self.outputs = [SimpleNamespace(name="y", shape=["batch", "seq", 4]), SimpleNamespace(name="n", shape=["batch"])]
        self.batches: list[dict] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def run(self, feed):
        with self.lock:
            self.batches.append(feed)
        mask = feed["attention_mask"]
        assert mask.dtype == np.int64 and mask.shape == feed["x"].shape[:2]
        real = mask.sum(1)
        assert (mask == (np.arange(mask.shape[1]) < real[:, None])).all(), "not a right-padding mask"
        if self.fail_on is not None and (feed["x"].shape[1] == self.fail_on):
            raise RuntimeError("session failed")
        y = feed["x"] * mask[..., None]
        if "memory" in feed:
            m = feed["memory_mask"][..., None]
            y = y + ((feed["memory"] * m).sum(1) / m.sum(1))[:, None] * mask[..., None]
        return {"y": y, "n": real}


def _x(rows: int, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, length, 4)).astype(np.float32)


def _concurrently(batcher, feeds):
    barrier = threading.Barrier(len(feeds))

    def one(feed):
        barrier.wait()
        return batcher.run([feed])[0]

    with ThreadPoolExecutor(len(feeds)) as pool:
        return list(pool.map(one, feeds))


def test_requests_of_different_lengths_are_padded_together_and_cut_back():
    session = Recorder()
    batcher = PaddingBatcher(session, max_batch_size=16, max_delay_s=0.5)
    feeds = [{"x": _x(1 + i % 2, 3 + 4 * i, i)} for i in range(6)]
    answers = _concurrently(batcher, feeds)
    for feed, answer in zip(feeds, answers, strict=True):
        np.testing.assert_array_equal(answer["y"], feed["x"])
        assert (answer["n"] == feed["x"].shape[1]).all()
    assert len(session.batches) < len(feeds)
    assert batcher.stats.snapshot() == (6, len(session.batches), sum(len(f["x"]) for f in feeds))


def test_memory_and_own_masks_are_honoured():
    session = Recorder(memory=True)
    batcher = PaddingBatcher(session, max_batch_size=8, max_delay_s=0.3)
    own = np.array([[1, 1, 1, 0, 0]], dtype=np.int64)
    feeds = [{"x": _x(1, 5, 0), "memory": _x(1, 2, 1), "attention_mask": own},
             {"x": _x(1, 9, 2), "memory": _x(1, 6, 3)}]
    answers = _concurrently(batcher, feeds)
    first = feeds[0]["x"] * own[..., None] + feeds[0]["memory"].mean(1)[:, None] * own[..., None]
    np.testing.assert_allclose(answers[0]["y"], first, rtol=1e-6)
    np.testing.assert_allclose(answers[1]["y"], feeds[1]["x"] + feeds[1]["memory"].mean(1)[:, None], rtol=1e-6)


def test_batches_never_exceed_the_limit_and_a_big_request_runs_alone():
    session = Recorder()
    batcher = PaddingBatcher(session, max_batch_size=4, max_delay_s=0.3)
    feeds = [{"x": _x(3, 5, i)} for i in range(4)] + [{"x": _x(6, 7, 9)}]
    answers = _concurrently(batcher, feeds)
    assert all(len(b["x"]) <= 4 for b in session.batches if len(b["x"]) != 6)
    assert [len(b["x"]) for b in session.batches].count(6) == 1
    np.testing.assert_array_equal(answers[-1]["y"], feeds[-1]["x"])


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    session = Recorder(fail_on=11)
    batcher = PaddingBatcher(session, max_batch_size=8)
    with pytest.raises(RuntimeError, match="session failed"):
        batcher.run([{"x": _x(1, 11, 0)}])
    np.testing.assert_array_equal(batcher.run([{"x": _x(2, 4, 1)}])[0]["y"], _x(2, 4, 1))


def test_requests_arriving_while_the_model_runs_are_taken_together():
    """No delay: a lone request runs at once in its own thread; those that queue up behind a
    running batch go in the next one together."""
    started, release = threading.Event(), threading.Event()

    class Slow(Recorder):
        def run(self, feed):
            if not self.batches:
                started.set()
                release.wait(5)
            return super().run(feed)

    session = Slow()
    batcher = PaddingBatcher(session, max_batch_size=8)
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(batcher.run, [{"x": _x(1, 3, 0)}])
        assert started.wait(5)
        later = [pool.submit(batcher.run, [{"x": _x(1, 4 + i, i)}]) for i in range(4)]
        deadline = time.monotonic() + 5
        while len(batcher._queue) < 4 and time.monotonic() < deadline:  # all four wait behind it
            time.sleep(0.01)
        release.set()
        answers = [f.result(5)[0] for f in [first, *later]]
    assert [len(b["x"]) for b in session.batches] == [1, 4]
    for i, answer in enumerate(answers[1:]):
        np.testing.assert_array_equal(answer["y"], _x(1, 4 + i, i))
