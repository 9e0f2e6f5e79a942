"""``RequestGuard``: the pure ASGI middleware that bounds every request body in size and time and
counts every HTTP request in the metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import ApiError, ErrorKind, error_response

__all__ = ["ENDPOINTS", "RequestGuard", "header", "replay"]

#: The paths counted under their own name in the metrics (anything else is ``"other"``).
ENDPOINTS = frozenset({"/rerank", "/v1/rerank", "/v2/rerank", "/health", "/metrics", "/info"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestGuard:
    """Pure ASGI middleware: reads each request body within a size and a time limit, and counts
    every HTTP request in the metrics.

    The body is read before the app sees the request, so the byte count covers chunked bodies
    (no ``Content-Length``) as they arrive: once over ``max_bytes`` the answer is 413 without
    reading the rest. A body that does not arrive in full within ``body_timeout_s`` of the
    headers is answered 408 and the connection is closed. The app then gets the body as one
    message (Starlette reads the whole body anyway before parsing JSON).

    Args:
        app: the ASGI app to guard.
        max_bytes: largest body accepted.
        body_timeout_s: seconds the whole body may take (``None``: no bound).
        observe: called with (endpoint, status, seconds) once per request.
    """

    def __init__(
        self,
        app: AsgiApp,
        *,
        max_bytes: int,
        body_timeout_s: float | None,
        observe: Callable[[str, int, float], None],
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            outcome = await self._read_body(scope, receive)
            if outcome is None:  # the client went away mid-body: nobody to answer
                status = 499
                return
            if isinstance(outcome, ApiError):
                await error_response(outcome)(scope, receive, send_observed)
                return
            await self.app(scope, replay(outcome, receive), send_observed)
        finally:
            self.observe(endpoint, status, time.perf_counter() - started)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | ApiError | None:
        length = header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return self._too_large(f"The request body has {int(length)} bytes")
        loop = asyncio.get_running_loop()
        deadline = None if self.body_timeout_s is None else loop.time() + self.body_timeout_s
        chunks: list[bytes] = []
        total = 0
        while True:
            if deadline is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    return ApiError(
                        ErrorKind.REQUEST_TIMEOUT,
                        f"The request body did not arrive within {self.body_timeout_s:g} s "
                        f"({total} bytes came); the connection is closed (server setting "
                        "request_body_timeout_s).",
                        field="body",
                        close=True,
                    )
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return self._too_large(f"The request body passed {self.max_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, what: str) -> ApiError:
        return ApiError(
            ErrorKind.PAYLOAD_TOO_LARGE,
            f"{what}; the limit is {self.max_bytes} (server setting max_request_bytes). "
            "Split the request.",
            field="body",
        )


def header(scope: Scope, name: bytes) -> str | None:
    """The value of the request header ``name`` (lower-case bytes), stripped; ``None`` if absent."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` as one message, then defers to the real one."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
