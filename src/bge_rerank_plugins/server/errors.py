"""The server's errors: one table from error kind to HTTP status, and the handlers that answer
every error, the server's own and FastAPI's, with the same JSON body.

The body is ``{"error": ..., "message": ..., "error_type": ..., "field": ...}``: ``error`` is
TEI's key, ``message`` Cohere's, ``error_type`` the :class:`ErrorKind` value and ``field`` the
request field at fault (or ``None``).

>>> ApiError(ErrorKind.PAYLOAD_TOO_LARGE, "too many documents", field="documents").status
413
>>> STATUS[ErrorKind.UNAVAILABLE]
503
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from enum import Enum
from types import MappingProxyType
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import RerankerError

__all__ = [
    "EXCEPTION_HANDLERS",
    "STATUS",
    "ApiError",
    "ErrorKind",
    "ModelLoadError",
    "error_body",
    "error_response",
]

logger = logging.getLogger(__name__)


class ErrorKind(str, Enum):
    """What went wrong, as sent in ``error_type``; :data:`STATUS` gives each one's HTTP status."""

    BAD_REQUEST = "bad_request"
    INVALID = "invalid"
    VALIDATION = "validation"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NON_FINITE_SCORE = "non_finite_score"
    MODEL_ERROR = "model_error"
    SERVER_ERROR = "server_error"


#: The one mapping from error kind to HTTP status.
STATUS: Mapping[ErrorKind, int] = MappingProxyType(
    {
        ErrorKind.BAD_REQUEST: 400,
        ErrorKind.INVALID: 422,
        ErrorKind.VALIDATION: 422,
        ErrorKind.UNAUTHORIZED: 401,
        ErrorKind.NOT_FOUND: 404,
        ErrorKind.METHOD_NOT_ALLOWED: 405,
        ErrorKind.REQUEST_TIMEOUT: 408,
        ErrorKind.PAYLOAD_TOO_LARGE: 413,
        ErrorKind.UNAVAILABLE: 503,
        ErrorKind.DEADLINE_EXCEEDED: 503,
        ErrorKind.NON_FINITE_SCORE: 500,
        ErrorKind.MODEL_ERROR: 500,
        ErrorKind.SERVER_ERROR: 500,
    }
)

# FastAPI's own errors come with a status; the kind they are reported as.
_KIND_OF_HTTP_STATUS = {404: ErrorKind.NOT_FOUND, 405: ErrorKind.METHOD_NOT_ALLOWED}


class ApiError(Exception):
    """An error answered as JSON: its kind (which sets the status), message and field at fault.

    Args:
        kind: an :class:`ErrorKind` (or its string value); the status is ``STATUS[kind]``.
        message: what went wrong and how to fix it.
        field: the request field at fault (``"documents[3]"``, ``"body"``), if any.
        close: also close the connection (``Connection: close``).
        retry_after: seconds after which a retry may succeed, sent as ``Retry-After`` (a 503
            while the model loads or a 429).
    """

    def __init__(
        self,
        kind: ErrorKind | str,
        message: str,
        *,
        field: str | None = None,
        close: bool = False,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind)
        self.message = message
        self.field = field
        self.close = close
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        """The HTTP status of this error's kind."""
        return STATUS[self.kind]


class ModelLoadError(RerankerError, RuntimeError):
    """The model failed to load, so :func:`~bge_rerank_plugins.server.run_server` stopped the
    server (the cause is chained)."""


def error_body(message: str, kind: ErrorKind | str, field: str | None) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {
        "error": message,
        "message": message,
        "error_type": ErrorKind(kind).value,
        "field": field,
    }


def error_response(error: ApiError) -> JSONResponse:
    """``error`` as a response (with ``WWW-Authenticate`` on 401, ``Connection: close`` and
    ``Retry-After`` if asked)."""
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    if error.close:
        headers["Connection"] = "close"
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return JSONResponse(
        error_body(error.message, error.kind, error.field), error.status, headers=headers
    )


async def api_error_handler(request: Request, error: ApiError) -> Response:
    """An :class:`ApiError` raised by a route or a dependency."""
    return error_response(error)


async def validation_error_handler(request: Request, error: RequestValidationError) -> Response:
    """A body that does not match the request schema: 422 naming the first field at fault."""
    problems = error.errors()
    first = problems[0] if problems else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = ".".join(location) or "body"
    message = f"{field}: {first.get('msg', 'invalid request')}"
    if first.get("type") == "json_invalid":
        message = f"The request body is not valid JSON ({first.get('msg', '')})."
        field = "body"
    body = error_body(message, ErrorKind.VALIDATION, field)
    body["detail"] = [
        {"loc": list(p.get("loc", ())), "msg": p.get("msg"), "type": p.get("type")}
        for p in problems
    ]
    return JSONResponse(body, STATUS[ErrorKind.VALIDATION])


async def http_error_handler(request: Request, error: StarletteHTTPException) -> Response:
    """FastAPI's own 4xx (unknown path, wrong method, a body it cannot parse) in this server's
    error shape; ``detail`` is kept for FastAPI-style clients."""
    message = str(error.detail)
    kind = _KIND_OF_HTTP_STATUS.get(error.status_code, ErrorKind.INVALID)
    field = "body" if error.status_code == 400 else None
    body = error_body(message, kind, field)
    body["detail"] = error.detail
    return JSONResponse(body, error.status_code, headers=getattr(error, "headers", None))


async def unexpected_error_handler(request: Request, error: Exception) -> Response:
    """Any other exception: 500. Its text can hold source paths and internals, so it goes to
    the log only; the answer names just its type."""
    logger.exception("Request to %s failed", request.url.path)
    return JSONResponse(
        error_body(
            f"Internal server error ({type(error).__name__}); the server log has the details.",
            ErrorKind.SERVER_ERROR,
            None,
        ),
        STATUS[ErrorKind.SERVER_ERROR],
    )


#: The handlers :func:`~bge_rerank_plugins.server.create_app` installs, by exception type.
EXCEPTION_HANDLERS: Mapping[type[Exception], Callable[..., Awaitable[Response]]] = MappingProxyType(
    {
        ApiError: api_error_handler,
        RequestValidationError: validation_error_handler,
        StarletteHTTPException: http_error_handler,
        Exception: unexpected_error_handler,
    }
)
