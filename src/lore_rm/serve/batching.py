"""One queue in front of the backbone: micro-batching across requests, and chunks of large
requests interleaved with small ones, so that no single request stalls reward traffic.

Every backbone call of the service goes through a :class:`MicroBatcher`: reward requests,
onboarding posts and next-questions candidates put their (already validated) conversations
on its queue and get a future. One dedicated thread runs the backbone:

* **chunks**: a request is cut into chunks, and each backbone call holds about ``chunk_ms``
  of work: every conversation has a cost (by default its characters, capped where the
  backbone stops reading, plus a fixed overhead: :func:`text_cost`), the thread keeps a
  running estimate of the seconds per unit of cost, and fills each call up to
  ``chunk_ms`` worth (at least one conversation, at most ``max_texts``). A request of 2,048
  long conversations is therefore many calls, and others run between them.
* **priority**: each call is filled with the requests that have the least work left first
  (shortest remaining first), so a one-text reward request joins the very next call
  whatever is queued; every fourth call, the oldest request goes first, so large requests
  always progress.
* **gathering**: with batching on, the thread waits up to ``max_wait_ms`` after the oldest
  waiting request arrived for others to join its call (a thread that was busy longer than
  that goes at once with whatever is queued). Off (``max_texts = 1`` or ``max_wait_ms = 0``):
  each call holds one request's conversations only (still in chunks, the same priority).

When a call that holds several requests' conversations fails, each of them is run again
alone, so an error reaches only the request that caused it (and ends it). A request's
``finish`` (scoring, for the reward endpoints) runs on the same thread once all its
conversations are embedded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from lore_rm.conversation import Conversation
from lore_rm.errors import LoreError

EmbedFn = Callable[[Sequence[Conversation]], torch.Tensor]

#: the cost of a conversation beyond its characters (template, tokenizer and call overheads)
TEXT_OVERHEAD = 64
#: seconds per unit of cost assumed before any call has been timed (a slow backbone's)
FIRST_RATE = 2e-4
#: every OLDEST_EVERY-th call, the oldest request goes first
OLDEST_EVERY = 4


def text_cost(conversation: Conversation, max_chars: int | None = None) -> int:
    """What embedding ``conversation`` costs, in characters: its content (at most
    ``max_chars``, where the backbone stops reading) plus :data:`TEXT_OVERHEAD`."""
    chars = sum(len(m.get("content", "")) for m in conversation)
    return TEXT_OVERHEAD + (chars if max_chars is None else min(chars, max_chars))


@dataclass(frozen=True)
class Batching:
    """Backbone queue settings: at most ``max_texts`` conversations per backbone call,
    gathered for at most ``max_wait_ms`` after the oldest waiting request arrived; calls
    sized to last about ``chunk_ms`` (large requests are cut into such chunks).
    ``max_texts = 1`` or ``max_wait_ms = 0``: requests are not gathered into shared calls."""

    max_texts: int = 64
    max_wait_ms: float = 2.0
    chunk_ms: float = 200.0

    def __post_init__(self) -> None:
        if self.max_texts < 1:
            raise LoreError(f"max_texts must be at least 1, got {self.max_texts}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise LoreError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms}")
        if not 1 <= self.chunk_ms <= 60_000:
            raise LoreError(f"chunk_ms must be in [1, 60000], got {self.chunk_ms}")

    @property
    def enabled(self) -> bool:
        return self.max_texts > 1 and self.max_wait_ms > 0

    @property
    def chunk_s(self) -> float:
        return self.chunk_ms / 1000

    @property
    def call_limit(self) -> int:
        """Most conversations per backbone call (64 when requests are not gathered)."""
        return self.max_texts if self.enabled else max(self.max_texts, Batching.max_texts)


@dataclass(eq=False)
class _Job:
    conversations: Sequence[Conversation]
    finish: Callable[[torch.Tensor], Any] | None
    future: Future
    order: list[int]  # positions, costliest first (similar lengths per call)
    costs: list[int]  # cost of each position of ``order``
    left_cost: int
    started: bool = False  # its future is running (it can no longer be cancelled)
    handed: int = 0  # positions of ``order`` given to calls so far
    done: int = 0  # positions embedded so far
    out: torch.Tensor | None = None
    arrived: float = field(default_factory=time.monotonic)

    @property
    def left(self) -> int:
        return len(self.order) - self.handed


class ShuttingDown(LoreError):
    """The batcher was closed: no new requests."""


class MicroBatcher:
    """Runs every :meth:`submit` call's conversations through ``embed`` on one dedicated
    thread, in chunks, small requests first (so an event loop awaiting the futures never
    runs the backbone, and no request waits behind a large one)."""

    def __init__(
        self,
        embed: EmbedFn,
        config: Batching,
        *,
        cost: Callable[[Conversation], int] = text_cost,
        name: str = "lore-micro-batcher",
    ):
        self.embed = embed
        self.config = config
        self.cost = cost
        self._queue: deque[_Job] = deque()  # jobs with conversations not yet handed out
        self._queued_texts = 0
        self._queued_cost = 0
        self._cond = threading.Condition()
        self._closed = False
        self.rate: float | None = None  # running estimate of seconds per unit of cost
        self._calls_since_oldest = 0
        self.batches = 0  # calls that held more than one request
        self.largest = 0  # most requests in one call so far
        self.calls: list[int] = []  # conversations per call (the last 1000)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(
        self,
        conversations: Sequence[Conversation],
        finish: Callable[[torch.Tensor], Any] | None = None,
    ) -> Future:
        """A future of ``finish(embeddings)`` (default: the (n, d) embeddings themselves)."""
        fut: Future = Future()
        cost = [int(self.cost(c)) for c in conversations]
        order = sorted(range(len(conversations)), key=lambda i: -cost[i])
        costs = [cost[i] for i in order]
        job = _Job(conversations, finish, fut, order, costs, sum(costs))
        with self._cond:
            if self._closed:
                raise ShuttingDown("the reward service is shutting down")
            if not order:
                fut.set_running_or_notify_cancel()
                self._complete(job, torch.zeros(0, 0))
                return fut
            self._queue.append(job)
            self._queued_texts += len(order)
            self._queued_cost += job.left_cost
            self._cond.notify()
        return fut

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new requests, finish the queued ones, stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def budget(self) -> float:
        """The cost one call may hold now: about ``chunk_ms`` of backbone time."""
        return self.config.chunk_s / (self.rate if self.rate is not None else FIRST_RATE)

    # ---- the worker ---------------------------------------------------------------------------
    def _take(self) -> list[tuple[_Job, list[int]]] | None:
        """The next call's pieces (a job and positions of its conversations), or None once
        closed and drained."""
        wait = self.config.max_wait_ms / 1000
        limit = self.config.call_limit
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            budget = self.budget()
            if self.config.enabled:
                deadline = self._queue[0].arrived + wait
                while (
                    self._queued_texts < limit and self._queued_cost < budget and not self._closed
                ):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            jobs = []
            for j in self._queue:
                if not j.started:
                    j.started = j.future.set_running_or_notify_cancel()
                if j.started:
                    jobs.append(j)
                else:  # its caller went away before it started
                    self._queued_texts -= j.left
                    self._queued_cost -= j.left_cost
            self._queue = deque(jobs)
            if not jobs:
                return []
            pieces = []
            n, spent = 0, 0.0
            for job in self._priority(jobs):
                rows = []
                while (
                    job.left and n < limit and (n == 0 or spent + job.costs[job.handed] <= budget)
                ):
                    rows.append(job.order[job.handed])
                    spent += job.costs[job.handed]
                    job.left_cost -= job.costs[job.handed]
                    self._queued_cost -= job.costs[job.handed]
                    job.handed += 1
                    n += 1
                if rows:
                    pieces.append((job, rows))
                self._queued_texts -= len(rows)
                if n >= limit or spent >= budget or not self.config.enabled:
                    break
            self._queue = deque(j for j in self._queue if j.left)
            return pieces

    def _priority(self, jobs: list[_Job]) -> list[_Job]:
        """The order in which jobs fill the next call: least work left first, except that
        every :data:`OLDEST_EVERY`-th call the oldest goes first."""
        by_work = sorted(jobs, key=lambda j: (j.left_cost, j.arrived))
        self._calls_since_oldest += 1
        if self._calls_since_oldest >= OLDEST_EVERY or by_work[0] is jobs[0]:
            self._calls_since_oldest = 0
            return [jobs[0], *(j for j in by_work if j is not jobs[0])]
        return by_work

    def _run(self) -> None:
        while (pieces := self._take()) is not None:
            if pieces:
                self._serve(pieces)

    def _call(self, conversations: list[Conversation]) -> torch.Tensor:
        t0 = time.perf_counter()
        e = self.embed(conversations)
        rate = (time.perf_counter() - t0) / max(sum(map(self.cost, conversations)), 1)
        self.rate = rate if self.rate is None else 0.5 * self.rate + 0.5 * rate
        self.calls = [*self.calls[-999:], len(conversations)]
        return e

    def _serve(self, pieces: list[tuple[_Job, list[int]]]) -> None:
        if len(pieces) > 1:
            self.batches += 1
        self.largest = max(self.largest, len(pieces))
        try:
            e = self._call([job.conversations[i] for job, rows in pieces for i in rows])
        except Exception as exc:
            if len(pieces) == 1:
                self._fail(pieces[0][0], exc)
                return
            for piece in pieces:  # find out whose request it was
                self._serve([piece])
            return
        start = 0
        for job, rows in pieces:
            self._deliver(job, rows, e[start : start + len(rows)])
            start += len(rows)

    def _deliver(self, job: _Job, rows: list[int], e: torch.Tensor) -> None:
        if job.future.done():  # failed earlier
            return
        if job.out is None:
            job.out = torch.empty(len(job.order), e.shape[1], dtype=e.dtype)
        job.out[torch.tensor(rows, dtype=torch.long)] = e
        job.done += len(rows)
        if job.done == len(job.order):
            self._complete(job, job.out)

    def _complete(self, job: _Job, e: torch.Tensor) -> None:
        try:
            result = e if job.finish is None else job.finish(e)
        except Exception as exc:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        with self._cond:
            if job in self._queue:
                self._queued_texts -= job.left
                self._queued_cost -= job.left_cost
                self._queue.remove(job)
        if not job.future.done():
            job.future.set_exception(exc)
