"""Sending one request with bounded retries: 429 and 503 (and refused connections) are retried
with backoff, honouring ``Retry-After``; anything else that is not a 2xx is an error naming the
status and the server's message.

Inside :func:`request_deadline` (``RemoteScorer.rank(timeout=...)``) a request keeps the deadline
instead: each attempt's httpx timeout is cut to the time left, and the request raises
:class:`~bge_rerank_plugins.runtime.deadline.DeadlineExceeded` (which ``rank`` turns into the
first-stage order) when no time is left, when an attempt times out because the deadline cut it,
when the server answers 503 ``deadline_exceeded`` (its ``--score-timeout``; never retried then),
or when the wait before a retry would end after the deadline.

>>> retry_delay("3", attempt=0)
3.0
>>> retry_delay(None, attempt=2)
2.0
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import httpx

from ..errors import RerankerError
from ..runtime.deadline import DeadlineExceeded

__all__ = [
    "MAX_RETRY_WAIT_S",
    "RETRY_STATUSES",
    "RemoteRerankError",
    "asend",
    "remaining",
    "request_deadline",
    "retry_delay",
    "send",
]

logger = logging.getLogger(__name__)

#: Statuses that mean "not now": retried up to ``max_retries`` times.
RETRY_STATUSES = frozenset({429, 503})
#: The longest one wait between retries, whatever ``Retry-After`` says.
MAX_RETRY_WAIT_S = 60.0
#: First backoff without ``Retry-After`` (doubled per attempt).
BACKOFF_S = 0.5
#: ``error_type`` of ``bge-rerank serve``'s 503 for a request past its ``--score-timeout``.
SERVER_DEADLINE = "deadline_exceeded"

# The monotonic time by which the requests sent in this thread / asyncio task must be answered.
_DEADLINE: ContextVar[float | None] = ContextVar("bge_rerank_remote_deadline", default=None)


class RemoteRerankError(RerankerError):
    """A rerank server refused or failed a request; ``status`` is its HTTP status (``None``
    when no answer came: a timeout or a refused connection)."""

    def __init__(self, message: str, *, status: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.url = url


@contextlib.contextmanager
def request_deadline(seconds: float | None) -> Iterator[None]:
    """Requests sent inside the block end within ``seconds`` from now or raise
    :class:`DeadlineExceeded` (``None``: no deadline; a nested one never extends the outer)."""
    if seconds is None:
        yield
        return
    deadline = time.monotonic() + seconds
    outer = _DEADLINE.get()
    token = _DEADLINE.set(deadline if outer is None else min(deadline, outer))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the :func:`request_deadline` (``None`` outside one; may be <= 0)."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def _attempt_timeout(timeout: float, url: str) -> tuple[float, bool]:
    """The seconds one attempt may take, and whether the deadline cut them below ``timeout``."""
    left = remaining()
    if left is None:
        return timeout, False
    if left <= 0:
        raise DeadlineExceeded(f"the deadline passed before the request to {url} was sent")
    return (left, True) if left < timeout else (timeout, False)


def _server_deadline(response: httpx.Response) -> bool:
    """Whether ``response`` is ``bge-rerank serve``'s 503 for a request past its deadline."""
    if response.status_code != 503:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("error_type") == SERVER_DEADLINE


def retry_delay(retry_after: str | None, attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): ``Retry-After`` (seconds or an HTTP
    date) when the server sent one, else exponential backoff; at most :data:`MAX_RETRY_WAIT_S`."""
    if retry_after:
        value = retry_after.strip()
        try:
            return min(MAX_RETRY_WAIT_S, max(0.0, float(value)))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value).timestamp()
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return min(MAX_RETRY_WAIT_S, max(0.0, when - time.time()))
    return min(MAX_RETRY_WAIT_S, BACKOFF_S * 2**attempt)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message", value)
            if value:
                return str(value)[:300]
    return str(body)[:300]


def _failure(response: httpx.Response, url: str, attempts: int) -> RemoteRerankError:
    status = response.status_code
    detail = _message(response)
    if status in RETRY_STATUSES:
        text = (
            f"{url} answered {status} ({detail}) {attempts} times; gave up after "
            f"max_retries={attempts - 1}. The server is overloaded or still loading its model: "
            "raise max_retries=, send smaller requests (max_batch=), or retry later."
        )
    elif status == 401 or status == 403:
        text = (
            f"{url} answered {status} ({detail}): pass the server's key as api_key= (sent as "
            "'Authorization: Bearer <key>')."
        )
    elif status == 404:
        text = (
            f"{url} answered 404 ({detail}): the server has no such endpoint. Pass "
            "dialect= matching the server (tei, cohere or vllm) or the endpoint's full URL."
        )
    elif status == 413:
        text = (
            f"{url} answered 413 ({detail}): the request is too large for the server; lower "
            "max_batch= to the server's per-request limit."
        )
    else:
        text = f"{url} answered {status}: {detail}"
    return RemoteRerankError(text, status=status, url=url)


def _transport_failure(error: httpx.HTTPError, url: str, timeout: float) -> RemoteRerankError:
    if isinstance(error, httpx.TimeoutException):
        text = (
            f"{url} did not answer within timeout={timeout:g} s ({type(error).__name__}); raise "
            "timeout= or send smaller requests (max_batch=)."
        )
    else:
        text = (
            f"Could not reach {url}: {type(error).__name__}: {error}. Check the URL and that "
            "the server is running."
        )
    return RemoteRerankError(text, url=url)


def _retryable(error: httpx.HTTPError) -> bool:
    return isinstance(error, httpx.ConnectError)


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    json: Any = None,
    max_retries: int,
    timeout: float,
) -> httpx.Response:
    """The 2xx response to one request, retrying 429/503 and refused connections (inside a
    :func:`request_deadline`: keeping it, see the module's docstring)."""
    attempt = 0
    while True:
        seconds, cut = _attempt_timeout(timeout, url)
        try:
            response, error = client.request(method, url, json=json, timeout=seconds), None
        except httpx.HTTPError as caught:
            response, error = None, caught
        delay = _wait_before_retry(response, error, url, attempt, max_retries, timeout, cut)
        if delay is None:
            return response  # type: ignore[return-value]
        time.sleep(delay)
        attempt += 1


def _wait_before_retry(
    response: httpx.Response | None,
    error: httpx.HTTPError | None,
    url: str,
    attempt: int,
    max_retries: int,
    timeout: float,
    cut: bool = False,
) -> float | None:
    """None when ``response`` is the answer; else the seconds to wait before the next attempt.

    Raises the request's error when it cannot be retried or the retries are spent, and
    :class:`DeadlineExceeded` when the :func:`request_deadline` ends it (``cut``: this attempt's
    timeout was the time left). Shared by :func:`send` and :func:`asend`, which differ only in
    how they wait."""
    if error is not None:
        if cut and isinstance(error, httpx.TimeoutException):
            raise DeadlineExceeded(f"{url} did not answer before the deadline") from error
        if not _retryable(error) or attempt >= max_retries:
            raise _transport_failure(error, url, timeout) from error
        delay = retry_delay(None, attempt)
    else:
        assert response is not None
        if response.is_success:
            return None
        if remaining() is not None and _server_deadline(response):
            logger.info("%s answered 503 %s: not retried within the deadline", url, SERVER_DEADLINE)
            raise DeadlineExceeded(f"{url} answered 503 {SERVER_DEADLINE}")
        if response.status_code not in RETRY_STATUSES or attempt >= max_retries:
            raise _failure(response, url, attempt + 1)
        delay = retry_delay(response.headers.get("Retry-After"), attempt)
    left = remaining()
    if left is not None and delay >= left:
        raise DeadlineExceeded(f"retrying {url} in {delay:.2f} s would end after the deadline")
    logger.info("Retrying %s in %.2f s (attempt %d)", url, delay, attempt + 1)
    return delay


async def asend(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    json: Any = None,
    max_retries: int,
    timeout: float,
) -> httpx.Response:
    """:func:`send` for an :class:`httpx.AsyncClient` (waits with ``asyncio.sleep``)."""
    attempt = 0
    while True:
        seconds, cut = _attempt_timeout(timeout, url)
        try:
            response, error = await client.request(method, url, json=json, timeout=seconds), None
        except httpx.HTTPError as caught:
            response, error = None, caught
        delay = _wait_before_retry(response, error, url, attempt, max_retries, timeout, cut)
        if delay is None:
            return response  # type: ignore[return-value]
        await asyncio.sleep(delay)
        attempt += 1
