"""The rerank HTTP service: the FastAPI app factory and the uvicorn runner.

Endpoints:

* ``POST /rerank``: Hugging Face text-embeddings-inference (TEI) shape (:mod:`.routes.tei`).
* ``POST /v1/rerank``, ``POST /v2/rerank``: Cohere shapes (the ``cohere`` SDK's ``Client`` and
  ``ClientV2`` work when pointed at the server with ``base_url``; :mod:`.routes.cohere`).
* ``POST /score``, ``POST /v1/score``: vLLM's score shape; ``GET /v1/models``: OpenAI's model
  list (:mod:`.routes.vllm`).
* ``GET /health``: 200 once the model is loaded, 503 before (with ``Retry-After`` while loading)
  or if loading failed.
* ``GET /metrics``: Prometheus text format.
* ``GET /info``: TEI's info shape (model, limits, ``max_client_batch_size``) plus the server's
  settings (behind the API key when one is set).

The model is loaded once, in the background, when the app starts; requests are scored by one worker
thread that merges concurrent requests into shared batches (:mod:`.service`, :mod:`.batcher`).
Under :func:`run_server` (and ``bge-rerank serve``) a model that fails to load stops the server,
and :func:`run_server` raises :class:`ModelLoadError`.

Every request body is read in full before it is parsed, within ``max_request_bytes`` (413 once
over, chunked bodies included) and ``request_body_timeout_s`` (408) (:mod:`.middleware`);
:func:`run_server` also closes connections that do not finish their request headers within
``request_header_timeout_s`` (:mod:`.protocol`).

>>> from bge_rerank_plugins.server import ServerConfig, create_app
>>> app = create_app(ServerConfig(model="path/to/model"))  # doctest: +SKIP
>>> run_server(ServerConfig(model="BAAI/bge-reranker-v2-m3"), port=8080)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from .auth import log_auth
from .checks import MAX_DOCUMENT_DEPTH
from .config import API_KEY_ENV, ServerConfig
from .errors import EXCEPTION_HANDLERS, ApiError, ModelLoadError
from .middleware import RequestGuard
from .protocol import with_header_timeout
from .routes import ROUTERS
from .service import ScorerService

if TYPE_CHECKING:
    import uvicorn

    from ..scorer import CrossEncoderScorer

# API_KEY_ENV, MAX_DOCUMENT_DEPTH, ApiError and ServerConfig were defined here before the split
# (issue 20); they are re-exported from this path for one release.
__all__ = [
    "API_KEY_ENV",
    "MAX_DOCUMENT_DEPTH",
    "ApiError",
    "ModelLoadError",
    "ServerConfig",
    "build_server",
    "create_app",
    "run_server",
]

logger = logging.getLogger(__name__)

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: ScorerService = app.state.service
    log_auth(service.config)
    loader = asyncio.get_running_loop().run_in_executor(None, service.load)
    try:
        yield
    finally:
        # uvicorn has already let in-flight requests finish; drain whatever is queued.
        await loader
        await service.close()


def create_app(
    config: ServerConfig | None = None,
    *,
    scorer_factory: Callable[[], CrossEncoderScorer] | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the FastAPI app; the model loads in the background when the app starts.

    Args:
        config: server settings (default :class:`ServerConfig()`).
        scorer_factory: builds the scorer (default ``config.build_scorer``). The server asks
            it for raw logits and applies the sigmoid per request, so its ``normalize`` setting
            does not matter. Tests use it to control when loading finishes.
        on_load_error: called (on the loading thread) with the exception if the model fails to
            load; :func:`run_server` uses it to stop the server. Without it the failure is
            logged at once and ``/health`` answers 503 with the reason.

    The app holds its :class:`~.service.ScorerService` at ``app.state.service`` (also
    ``app.state.rerank``, the name before the split), and ``app.state.config`` /
    ``app.state.metrics``.

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> uvicorn.run(create_app(ServerConfig(model="BAAI/bge-reranker-v2-m3")))  # doctest: +SKIP
    """
    config = config or ServerConfig()
    service = ScorerService(config, scorer_factory=scorer_factory, on_load_error=on_load_error)
    app = FastAPI(
        title="bge-rerank-plugins server",
        description="Cross-encoder reranking with TEI- and Cohere-compatible endpoints.",
        lifespan=_lifespan,
    )
    app.state.service = app.state.rerank = service
    app.state.config = config
    app.state.metrics = service.metrics
    app.add_middleware(
        RequestGuard,
        max_bytes=config.max_request_bytes,
        body_timeout_s=config.request_body_timeout_s,
        observe=service.metrics.observe_request,
    )
    for exception, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exception, handler)
    for router in ROUTERS:
        app.include_router(router)
    return app


def build_server(
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    graceful_timeout_s: float = 30.0,
    scorer_factory: Callable[[], CrossEncoderScorer] | None = None,
) -> uvicorn.Server:
    """A uvicorn server for ``config``, not yet running (``run_server`` runs one).

    The app is at ``server.config.app``. Its HTTP protocol closes connections whose request
    headers stall (``config.request_header_timeout_s``), and a model that fails to load makes
    the server exit (``server.config.app.state.service.load_exception`` then holds the error).
    """
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    holder: list[uvicorn.Server] = []

    def stop(error: BaseException) -> None:
        if holder:
            holder[0].should_exit = True

    app = create_app(config, scorer_factory=scorer_factory, on_load_error=stop)
    protocol: Any = "auto"
    if config.request_header_timeout_s is not None:
        protocol = with_header_timeout(AutoHTTPProtocol, config.request_header_timeout_s)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            http=protocol,
            timeout_graceful_shutdown=graceful_timeout_s,
        )
    )
    holder.append(server)
    if not config.auth_enabled and host not in _LOCAL_HOSTS:
        logger.warning(
            "Serving on %s without an API key: anyone who can reach this address can use the "
            "server. Set --api-key or %s.",
            host,
            API_KEY_ENV,
        )
    return server


def run_server(
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    graceful_timeout_s: float = 30.0,
) -> None:
    """Serve ``config`` with uvicorn until interrupted (Ctrl-C / SIGTERM shut down gracefully).

    On shutdown uvicorn stops accepting connections and waits up to ``graceful_timeout_s`` for
    in-flight requests; then the batcher scores what is still queued and stops.

    Raises:
        ModelLoadError: the model failed to load; the server stopped at once (the original
            error is the ``__cause__``).

    Example:
        >>> run_server(ServerConfig(model="BAAI/bge-reranker-v2-m3"), port=8080)  # doctest: +SKIP
    """
    server = build_server(
        config, host=host, port=port, log_level=log_level, graceful_timeout_s=graceful_timeout_s
    )
    server.run()
    service: ScorerService = server.config.app.state.service
    if service.load_exception is not None:
        raise ModelLoadError(
            f"The model {config.model!r} failed to load, so the server stopped: "
            f"{service.load_error}"
        ) from service.load_exception
