"""Padding requests of different lengths into one batch: :class:`PaddingBatcher`.

A model exported with padding masks (``--with-mask``) can run requests of different lengths
as one batch: ``serve`` lets Triton's dynamic batcher join them (ragged inputs) and every
model instance hands what it gets to one batcher, which right-pads the requests waiting for
the model to the longest sequence (and memory) with their masks, runs the session once, and
gives every request its own rows back, cut to its own length. Masked positions never change
real outputs (DESIGN.md section 9), so each answer is what the model gives that request alone.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from hvlm_export.artifacts import MASK_INPUTS

__all__ = ["PaddingBatcher", "BatchStats", "MASKS"]

#: padding mask input -> the input whose sequence axis it masks
MASKS = {mask: source for source, mask in MASK_INPUTS.items()}


@dataclass
class BatchStats:
    """What the model ran: requests answered, model runs and the rows of those runs."""

    requests: int = 0
    runs: int = 0
    rows: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests: int, rows: int) -> None:
        with self._lock:
            self.requests += requests
            self.runs += 1
            self.rows += rows

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.requests, self.runs, self.rows


@dataclass
class _Pending:
    feed: dict[str, np.ndarray]
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None
    done: bool = False

    @property
    def rows(self) -> int:
        return len(self.feed["x"])


class PaddingBatcher:
    """Runs ``session`` on right-padded batches of at most ``max_batch_size`` rows (a request
    larger than that runs alone), shared by the threads that call :meth:`run`.

    No thread of its own: a caller that finds the model free runs the batch itself (so one
    request alone pays no hand-over), and the requests that arrive while a batch runs are
    taken together by the next free caller. Under load the batches fill by themselves;
    ``max_delay_s`` (default 0) makes a runner wait that long for more before it starts."""

    def __init__(self, session, max_batch_size: int, max_delay_s: float = 0.0) -> None:
        self.session = session
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.masks = {m: src for m, src in MASKS.items() if m in {t.name for t in session.inputs}}
        #: outputs cut back to each request's length: those on the sequence axis of x
        self.cut = [t.name for t in session.outputs if len(t.shape) > 1 and t.shape[1] == "seq"]
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._busy = False

    def run(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Answer these requests (blocking); raises what the session raised."""
        pending = [_Pending(dict(feed)) for feed in feeds]
        with self._cond:
            self._queue.extend(pending)
            while not all(p.done for p in pending):
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                batch = self._take()
                self._cond.release()
                try:
                    self._answer(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        for p in pending:
            if p.error is not None:
                raise p.error
        return [p.result for p in pending]

    def _take(self) -> list[_Pending]:
        """The next batch from the queue (lock held): requests in arrival order while they fit,
        after waiting up to the delay for more."""
        if self.max_delay_s > 0 and sum(p.rows for p in self._queue) < self.max_batch_size:
            self._cond.wait(self.max_delay_s)
        batch, rows = [], 0
        while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch_size):
            rows += self._queue[0].rows
            batch.append(self._queue.pop(0))
        return batch

    def _answer(self, batch: list[_Pending]) -> None:
        try:
            outputs = self.session.run(self._padded(batch))
            start = 0
            for p in batch:
                length = p.feed["x"].shape[1]
                p.result = {k: (v[start:start + p.rows, :length] if k in self.cut else v[start:start + p.rows])
                            for k, v in outputs.items()}
                start += p.rows
            self.stats.add(len(batch), start)
        except Exception as err:  # every request of the batch gets the error, the server goes on
            for p in batch:
                p.error = err
        for p in batch:
            p.done = True

    def _padded(self, batch: list[_Pending]) -> dict[str, np.ndarray]:
        """The requests right-padded to the longest of each masked input, with their masks
        (a request without one is all real tokens)."""
        feed = {}
        for mask, source in self.masks.items():
            longest = max(p.feed[source].shape[1] for p in batch)
            pieces, masks = [], []
            for p in batch:
                x = p.feed[source]
                own = p.feed.get(mask, np.ones(x.shape[:2], dtype=np.int64))
                pad = longest - x.shape[1]
                pieces.append(np.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)))
                masks.append(np.pad(own.astype(np.int64), [(0, 0), (0, pad)]))
            feed[source], feed[mask] = np.concatenate(pieces), np.concatenate(masks)
        for name in batch[0].feed:
            if name not in feed:
                feed[name] = np.concatenate([p.feed[name] for p in batch])
        return feed
