"""A scoring deadline: the batch loop stops at a batch boundary once the next batch would end late.

:func:`deadline_scope` sets the deadline for the code it wraps (a context variable, so each
thread and each asyncio task has its own); :func:`check_deadline` is called by the batch loop
(:func:`bge_rerank_plugins.runtime.backends.batches.run_batches`) before each batch and raises
:class:`DeadlineExceeded` when the deadline has passed, or when the previous batch's duration
says that the next one would end after it. Whoever set the deadline catches it
(:meth:`bge_rerank_plugins.CrossEncoderScorer.rank` returns the first-stage order); outside a
scope nothing is checked.

>>> import time
>>> with deadline_scope(10.0):
...     check_deadline(last_batch_seconds=0.01)  # plenty of time: nothing happens
>>> with deadline_scope(0.0):
...     check_deadline()
Traceback (most recent call last):
...
bge_rerank_plugins.runtime.deadline.DeadlineExceeded: the scoring deadline has passed
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["DeadlineExceeded", "check_deadline", "deadline_scope"]

_DEADLINE: ContextVar[float | None] = ContextVar("bge_rerank_deadline", default=None)


class DeadlineExceeded(Exception):
    """Scoring stopped at a batch boundary because the deadline passed (or would have)."""


@contextlib.contextmanager
def deadline_scope(seconds: float | None) -> Iterator[None]:
    """Scoring inside the block stops before the batch that would end more than ``seconds``
    from now (``None``: no deadline)."""
    if seconds is None:
        yield
        return
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline(last_batch_seconds: float = 0.0) -> None:
    """Raise :class:`DeadlineExceeded` if a batch taking ``last_batch_seconds`` would end late."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() + last_batch_seconds > deadline:
        raise DeadlineExceeded("the scoring deadline has passed")
