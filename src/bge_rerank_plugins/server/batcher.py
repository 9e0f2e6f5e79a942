"""Dynamic batching: concurrent requests share model batches, scored by one worker thread.

Requests put their (query, passage) pairs on a queue and wait on a future. One worker thread takes
the oldest request, then keeps taking more until the merged batch holds ``max_batch_pairs`` pairs
or the wait window has passed since it took the first one, scores the merged pairs in one call, and
hands each request its slice of the scores. While the worker is busy new requests pile up, so under
load batches fill without waiting at all. The wait window is ``max_wait_ms`` or, with
``wait_fraction`` set, that fraction of the recent model time per batch, capped at ``max_wait_ms``:
waiting 10% of a 2-second CPU batch costs little and lets clients whose answers just went out
send their next request into the same batch, while a 20 ms GPU batch waits only 2 ms.

Why this helps on a CPU: the scorer sorts the merged pairs by token length before cutting them into
model batches, so a batch holds pairs of similar length and little compute goes to padding (one
request of 20 passages is padded to its longest passage); there are fewer, larger matrix products;
and the fixed cost of a call (tokenizer set-up, Python, operator dispatch) is paid once per merged
batch instead of once per request.

>>> batcher = DynamicBatcher(lambda pairs: [float(len(p)) for _, p in pairs])
>>> batcher.start()
>>> batcher.submit([("q", "abc"), ("q", "de")]).result()
[3.0, 2.0]
>>> batcher.close()
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

__all__ = ["BatchStats", "BatcherClosedError", "DynamicBatcher"]

logger = logging.getLogger(__name__)

Pair = tuple[str, str]
ScoreFn = Callable[[list[Pair]], list[float]]


class BatcherClosedError(RuntimeError):
    """Raised by :meth:`DynamicBatcher.submit` after :meth:`DynamicBatcher.close`."""


@dataclass(frozen=True)
class BatchStats:
    """What one merged batch held and how long the model took on it."""

    requests: int
    pairs: int
    seconds: float


@dataclass
class _Job:
    pairs: list[Pair]
    future: Future = field(default_factory=Future)


_STOP = object()


class DynamicBatcher:
    """Merge concurrent scoring requests into shared calls of ``score_fn`` on one worker thread.

    Args:
        score_fn: scores a list of (query, passage) pairs, in order (for example
            ``lambda pairs: scorer.score_pairs(pairs, normalize=False)``).
        max_batch_pairs: most pairs merged into one call; a single request larger than this is
            still scored, alone.
        max_wait_ms: longest the worker waits for more requests after taking the first one.
            ``0`` merges only what is already queued.
        wait_fraction: wait this fraction of the recent model time per batch (a moving
            average), at most ``max_wait_ms``; ``None`` always waits ``max_wait_ms``.
        enabled: ``False`` scores each request on its own (the baseline that batching is
            measured against); requests still run one at a time on the worker thread.
        on_batch: called on the worker thread with a :class:`BatchStats` after each call.
        initializer: called once on the worker thread before it takes requests (per-thread
            settings such as ``torch.set_num_threads``).

    Example:
        >>> batcher = DynamicBatcher(lambda pairs: [1.0] * len(pairs), max_wait_ms=2)
        >>> batcher.start()
        >>> batcher.submit([("q", "a")]).result()
        [1.0]
        >>> batcher.close()
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        *,
        max_batch_pairs: int = 256,
        max_wait_ms: float = 5.0,
        wait_fraction: float | None = None,
        enabled: bool = True,
        on_batch: Callable[[BatchStats], None] | None = None,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        if not isinstance(max_batch_pairs, int) or max_batch_pairs < 1:
            raise ValueError(f"max_batch_pairs must be a positive int, got {max_batch_pairs!r}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        self.score_fn = score_fn
        self.max_batch_pairs = max_batch_pairs
        if wait_fraction is not None and not 0 < wait_fraction <= 1:
            raise ValueError(f"wait_fraction must be in (0, 1] or None, got {wait_fraction!r}")
        self.max_wait_s = max_wait_ms / 1000.0
        self.wait_fraction = wait_fraction
        self._batch_seconds = 0.0  # moving average of model time per merged batch
        self.enabled = enabled
        self.on_batch = on_batch
        self.initializer = initializer
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the worker thread (once)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._work, name="bge-rerank-batcher", daemon=True
            )
            self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, score everything already queued, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("The batcher did not drain within %.1f s.", timeout or 0.0)

    @property
    def wait_s(self) -> float:
        """The current wait window in seconds."""
        if self.wait_fraction is None:
            return self.max_wait_s
        return min(self.max_wait_s, self.wait_fraction * self._batch_seconds)

    @property
    def pending(self) -> int:
        """Requests waiting in the queue (approximate)."""
        return self._queue.qsize()

    # ---------------------------------------------------------------- submitting
    def submit(self, pairs: Sequence[Pair]) -> Future:
        """Queue ``pairs``; the returned future resolves to their scores, in order."""
        job = _Job(list(pairs))
        if not job.pairs:
            job.future.set_result([])
            return job.future
        with self._lock:
            if self._closed:
                raise BatcherClosedError("The batcher is closed; no new requests are taken.")
            if self._thread is None:
                raise RuntimeError("Call start() before submit().")
            self._queue.put(job)
        return job.future

    async def score(self, pairs: Sequence[Pair]) -> list[float]:
        """Await the scores of ``pairs`` from a coroutine (the event loop is never blocked)."""
        return await asyncio.wrap_future(self.submit(pairs))

    # ---------------------------------------------------------------- worker
    def _work(self) -> None:
        if self.initializer is not None:
            try:
                self.initializer()
            except Exception:
                logger.exception("The batcher's initializer failed; continuing without it")
        carry: _Job | None = None
        stopping = False
        while True:
            if carry is not None:
                first, carry = carry, None
            elif stopping:
                # Drain: everything queued before close() is still scored.
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    return
            else:
                first = self._queue.get()
            if first is _STOP:
                stopping = True
                continue
            jobs = [first]
            if self.enabled:
                carry, saw_stop = self._gather(jobs)
                stopping = stopping or saw_stop
            self._run(jobs)

    def _gather(self, jobs: list[_Job]) -> tuple[_Job | None, bool]:
        """Add queued jobs to ``jobs`` within the pair budget and wait window."""
        total = len(jobs[0].pairs)
        deadline = time.monotonic() + self.wait_s
        while total < self.max_batch_pairs:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0:
                    job = self._queue.get(timeout=remaining)
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return None, True
            if total + len(job.pairs) > self.max_batch_pairs:
                return job, False
            jobs.append(job)
            total += len(job.pairs)
        return None, False

    def _run(self, jobs: list[_Job]) -> None:
        # A request whose client went away (future cancelled) is not scored.
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        pairs = [pair for job in live for pair in job.pairs]
        started = time.perf_counter()
        try:
            scores = self.score_fn(pairs)
            if len(scores) != len(pairs):
                raise RuntimeError(f"score_fn returned {len(scores)} scores for {len(pairs)} pairs")
        except Exception as error:
            if len(live) == 1:
                live[0].future.set_exception(error)
                return
            # One bad request must not fail the others merged with it: score them one by one.
            logger.warning(
                "A merged batch of %d requests failed (%s); scoring them one at a time.",
                len(live),
                error,
            )
            for job in live:
                self._run_one(job)
            return
        self._report(len(live), len(pairs), time.perf_counter() - started)
        start = 0
        for job in live:
            job.future.set_result(scores[start : start + len(job.pairs)])
            start += len(job.pairs)

    def _run_one(self, job: _Job) -> None:
        started = time.perf_counter()
        try:
            scores = self.score_fn(job.pairs)
        except Exception as error:
            job.future.set_exception(error)
            return
        self._report(1, len(job.pairs), time.perf_counter() - started)
        job.future.set_result(scores)

    def _report(self, requests: int, pairs: int, seconds: float) -> None:
        if self._batch_seconds == 0.0:
            self._batch_seconds = seconds
        else:
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
        if self.on_batch is None:
            return
        try:
            self.on_batch(BatchStats(requests, pairs, seconds))
        except Exception:  # metrics must never break scoring
            logger.exception("on_batch callback failed")
