"""Cross-request micro-batching: concurrent reward requests share one backbone forward pass.

Requests put their (already validated) conversations on a queue and get a future. One
dedicated thread takes the oldest request, then keeps gathering until the batch holds
``max_texts`` conversations or ``max_wait_ms`` have passed since that request arrived (a
worker that was busy longer than that goes at once with whatever is queued), scores the
whole batch with a single call, and hands each request its own slice. When the batched call
fails, each of its requests is run again alone, so an error reaches only the request that
caused it. Requests are never split: one larger than ``max_texts`` runs on its own.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from lore_rm.conversation import Conversation
from lore_rm.errors import LoreError
from lore_rm.serve.service import Scored

ScoreFn = Callable[[Sequence[Conversation], Sequence[str | None]], Scored]


@dataclass(frozen=True)
class Batching:
    """Micro-batching settings: at most ``max_texts`` conversations per backbone forward,
    gathered for at most ``max_wait_ms`` after the oldest waiting request arrived.
    ``max_texts = 1`` or ``max_wait_ms = 0``: off (each request runs on its own)."""

    max_texts: int = 64
    max_wait_ms: float = 2.0

    def __post_init__(self) -> None:
        if self.max_texts < 1:
            raise LoreError(f"max_texts must be at least 1, got {self.max_texts}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise LoreError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms}")

    @property
    def enabled(self) -> bool:
        return self.max_texts > 1 and self.max_wait_ms > 0


@dataclass
class _Job:
    conversations: Sequence[Conversation]
    users: Sequence[str | None]
    future: Future[Scored]
    arrived: float = field(default_factory=time.monotonic)


class ShuttingDown(LoreError):
    """The batcher was closed: no new requests."""


class MicroBatcher:
    """Gathers :meth:`submit` calls from any thread into batched ``score`` calls, run on one
    dedicated thread (so an event loop awaiting the futures never runs the backbone)."""

    def __init__(self, score: ScoreFn, config: Batching, *, name: str = "lore-micro-batcher"):
        self.score = score
        self.config = config
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # score calls made for batches (a retry alone is not counted)
        self.largest = 0  # most requests gathered into one batch so far
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, conversations: Sequence[Conversation], users: Sequence[str | None]):
        """A future of the :class:`Scored` of ``conversations`` for ``users``."""
        fut: Future[Scored] = Future()
        with self._cond:
            if self._closed:
                raise ShuttingDown("the reward service is shutting down")
            self._queue.append(_Job(conversations, users, fut))
            self._queued_texts += len(conversations)
            self._cond.notify()
        return fut

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new requests, finish the queued ones, stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---- the worker ---------------------------------------------------------------------------
    def _take(self) -> list[_Job] | None:
        """The next batch (oldest first), or None once closed and drained."""
        limit, wait = self.config.max_texts, self.config.max_wait_ms / 1000
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].arrived + wait
            while self._queued_texts < limit and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs: list[_Job] = []
            n = 0
            while self._queue and (not jobs or n + len(self._queue[0].conversations) <= limit):
                job = self._queue.popleft()
                self._queued_texts -= len(job.conversations)
                if job.future.set_running_or_notify_cancel():  # False: its caller went away
                    jobs.append(job)
                    n += len(job.conversations)
            return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            if jobs:
                self._serve(jobs)

    def _serve(self, jobs: list[_Job]) -> None:
        if len(jobs) == 1:
            self._alone(jobs[0])
            return
        self.batches += 1
        self.largest = max(self.largest, len(jobs))
        try:
            scored = self.score(
                [c for j in jobs for c in j.conversations], [u for j in jobs for u in j.users]
            )
        except Exception:
            for job in jobs:  # find out whose request it was
                self._alone(job)
            return
        ends = np.cumsum([len(j.conversations) for j in jobs])
        for job, end in zip(jobs, ends, strict=True):
            start = end - len(job.conversations)
            job.future.set_result(scored.rows(int(start), int(end)))

    def _alone(self, job: _Job) -> None:
        try:
            job.future.set_result(self.score(job.conversations, job.users))
        except Exception as exc:
            job.future.set_exception(exc)
