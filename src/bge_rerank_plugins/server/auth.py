"""The bearer API key: whether a request carries it, and the dependency that requires it.

With a key set (:attr:`ServerConfig.api_key <bge_rerank_plugins.server.ServerConfig>`), the
rerank endpoints and ``/info`` answer 401 without it; ``/health`` answers only the status and
``/metrics`` stays open, for probes and scrapers.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import Request

from .config import API_KEY_ENV, ServerConfig
from .errors import ApiError, ErrorKind
from .service import get_service

__all__ = ["has_key", "log_auth", "require_api_key"]

logger = logging.getLogger(__name__)


def has_key(config: ServerConfig, request: Request) -> bool:
    """Whether ``request`` may use the protected endpoints (always, when auth is off)."""
    if not config.api_key:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # Constant-time comparison, whatever the scheme, so timing tells nothing about the key.
    # Header values arrive latin-1 decoded: back to their bytes, to compare with the key's
    # UTF-8 bytes.
    sent = token.strip().encode("latin-1", errors="replace")
    matches = hmac.compare_digest(sent, config.api_key.encode("utf-8"))
    return scheme.lower() == "bearer" and matches


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries the key (no-op with auth off)."""
    if not has_key(get_service(request).config, request):
        raise ApiError(
            ErrorKind.UNAUTHORIZED,
            "Missing or wrong API key: send the header 'Authorization: Bearer <key>'.",
            field="Authorization",
        )


def log_auth(config: ServerConfig) -> None:
    """Say at start-up whether auth is on, and where the key came from."""
    if config.auth_enabled:
        logger.info(
            "Auth on (key from %s): /rerank, /v1/rerank, /v2/rerank and /info need "
            "'Authorization: Bearer <key>'; /health and /metrics stay open.",
            config.api_key_source,
        )
    else:
        logger.info(
            "Auth off: no API key is set (--api-key or %s), so anyone who can reach the "
            "server can call every endpoint.",
            API_KEY_ENV,
        )
