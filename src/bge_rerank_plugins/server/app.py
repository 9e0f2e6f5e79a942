"""The rerank HTTP service: a FastAPI app factory and a uvicorn runner.

Endpoints:

* ``POST /rerank``: Hugging Face text-embeddings-inference (TEI) shape.
* ``POST /v1/rerank``, ``POST /v2/rerank``: Cohere shapes (the ``cohere`` SDK's ``Client`` and
  ``ClientV2`` work when pointed at the server with ``base_url``).
* ``GET /health``: 200 once the model is loaded, 503 before (or if loading failed).
* ``GET /metrics``: Prometheus text format.
* ``GET /info``: the model and the server's limits and batching settings (behind the API key
  when one is set).

The model is loaded once, in the background, when the app starts; requests are scored by one worker
thread that merges concurrent requests into shared batches (see :mod:`.batcher`). Under
:func:`run_server` (and ``bge-rerank serve``) a model that fails to load stops the server, and
:func:`run_server` raises :class:`ModelLoadError`.

Every request body is read in full before it is parsed, within ``max_request_bytes`` (413 once
over, chunked bodies included) and ``request_body_timeout_s`` (408); :func:`run_server` also closes
connections that do not finish their request headers within ``request_header_timeout_s``.

>>> from bge_rerank_plugins.server import ServerConfig, create_app
>>> app = create_app(ServerConfig(model="path/to/model"))  # doctest: +SKIP
>>> run_server(ServerConfig(model="BAAI/bge-reranker-v2-m3"), port=8080)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backends import check_backend
from ..errors import NonFiniteScoreError, RerankerError
from ..scorer import DEFAULT_MODEL
from .batcher import BatcherClosedError, BatchStats, DynamicBatcher
from .metrics import ServerMetrics
from .schemas import (
    CohereRerankResponse,
    CohereV1RerankRequest,
    CohereV2RerankRequest,
    TEIRank,
    TEIRerankRequest,
)

if TYPE_CHECKING:
    import uvicorn

    from ..scorer import CrossEncoderScorer

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

#: Environment variable read for the bearer API key when none is given.
API_KEY_ENV = "BGE_RERANK_API_KEY"

#: Deepest nesting of lists and objects accepted inside one Cohere object document (deeper -> 422;
#: returned documents are echoed back, and JSON serializers give up a few hundred levels down).
MAX_DOCUMENT_DEPTH = 64

_ENDPOINTS = {"/rerank", "/v1/rerank", "/v2/rerank", "/health", "/metrics", "/info"}

# A lone UTF-16 surrogate: JSON's "\ud800" escape decodes to one, and it cannot be encoded as
# UTF-8, so neither the tokenizer nor the response encoder can take it.
_SURROGATE = re.compile("[\ud800-\udfff]")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class ServerConfig:
    """Settings of the rerank server; every value is checked here, before anything starts.

    Args:
        model: Hub id or local directory of the cross-encoder.
        device, dtype, max_length, batch_size, token_budget, backend: passed to
            :class:`~bge_rerank_plugins.CrossEncoderScorer` (``batch_size`` is the most pairs per
            forward pass; ``backend="torch-int8"`` served 1.6x the pairs/s of float32 on
            a CPU with VNNI, with approximate scores: docs/benchmarks.md).
        max_batch_pairs: most pairs the batcher merges from concurrent requests into one scorer
            call (the scorer then length-sorts them and cuts them into forward passes).
        max_batch_wait_ms: longest the batcher waits for more requests after the first one.
        batch_wait_fraction: the batcher waits this fraction (in (0, 1]) of the recent model
            time per batch, capped at ``max_batch_wait_ms`` (so a slow CPU batch waits long enough
            to merge the next wave of requests and a fast GPU batch barely waits); ``None``:
            always wait ``max_batch_wait_ms``.
        batching: ``False`` scores each request on its own (baseline for benchmarks).
        max_documents: most documents (texts) in one request; more -> 413.
        max_text_chars: most characters in the query or any one document; more -> 413.
        max_request_bytes: largest request body accepted, counted as it arrives (so a chunked
            body without ``Content-Length`` is cut off too); larger -> 413.
        api_key: when set, the rerank endpoints and ``/info`` require
            ``Authorization: Bearer <api_key>``. ``None`` reads ``BGE_RERANK_API_KEY``; unset
            means no auth. An empty key (``""``, or the variable set to ``""``) is a
            :class:`ValueError`, not "auth off": unset the variable to serve without a key.
        served_model_name: the model name reported in ``/info`` (default: ``model``).
        torch_threads: CPU threads torch uses for the model (``torch.set_num_threads``; process
            wide). ``None`` keeps torch's default (one per core). On a busy or shared CPU, fewer
            threads than cores often score faster and leave a core for the HTTP side.
        drain_timeout_s: how long shutdown waits for queued requests to be scored.
        request_header_timeout_s: a connection that has not sent complete request headers
            this many seconds after it opened (or after its previous response) is closed.
            Applied by :func:`run_server`; ``None``: no bound.
        request_body_timeout_s: the whole request body must arrive within this many seconds
            of the request headers; slower -> 408 and the connection is closed. ``None``: no
            bound.

    Raises:
        TypeError, ValueError: a setting of the wrong type or out of range, naming it.
    """

    model: str = DEFAULT_MODEL
    device: str | None = None
    dtype: str = "auto"
    max_length: int | str | None = None
    batch_size: int | None = None
    token_budget: int | None = None
    backend: str = "torch"
    max_batch_pairs: int = 512
    max_batch_wait_ms: float = 100.0
    batch_wait_fraction: float | None = 0.1
    batching: bool = True
    max_documents: int = 1000
    max_text_chars: int = 20_000
    max_request_bytes: int = 32 * 1024 * 1024
    api_key: str | None = None
    served_model_name: str | None = None
    torch_threads: int | None = None
    drain_timeout_s: float = 30.0
    request_header_timeout_s: float | None = 10.0
    request_body_timeout_s: float | None = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise TypeError(
                f"model must be a Hub id or a model directory (a non-empty string), got "
                f"{self.model!r}"
            )
        for name in ("max_batch_pairs", "max_documents", "max_text_chars", "max_request_bytes"):
            value = getattr(self, name)
            if not _is_positive_int(value):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("batch_size", "token_budget", "torch_threads"):
            value = getattr(self, name)
            if value is not None and not _is_positive_int(value):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if self.max_length is not None and self.max_length != "auto":
            if not isinstance(self.max_length, int) or isinstance(self.max_length, bool):
                raise ValueError(
                    f"max_length must be an int >= 8, 'auto' or None, got {self.max_length!r}"
                )
            if self.max_length < 8:
                raise ValueError(
                    f"max_length must be an int >= 8, 'auto' or None, got {self.max_length!r}"
                )
        check_backend(self.backend)
        self._check_dtype_and_device()
        if not _is_number(self.max_batch_wait_ms) or not 0 <= self.max_batch_wait_ms < math.inf:
            raise ValueError(
                f"max_batch_wait_ms must be a number >= 0, got {self.max_batch_wait_ms!r}"
            )
        fraction = self.batch_wait_fraction
        if fraction is not None and (not _is_number(fraction) or not 0 < fraction <= 1):
            raise ValueError(
                f"batch_wait_fraction must be in (0, 1] or None (always wait "
                f"max_batch_wait_ms), got {fraction!r}"
            )
        if not isinstance(self.batching, bool):
            raise TypeError(f"batching must be True or False, got {self.batching!r}")
        if not _is_number(self.drain_timeout_s) or not 0 <= self.drain_timeout_s < math.inf:
            raise ValueError(f"drain_timeout_s must be a number >= 0, got {self.drain_timeout_s!r}")
        for name in ("request_header_timeout_s", "request_body_timeout_s"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not 0 < value < math.inf):
                raise ValueError(f"{name} must be a number of seconds > 0 or None, got {value!r}")
        if self.served_model_name is not None and not isinstance(self.served_model_name, str):
            raise TypeError(
                f"served_model_name must be a string or None, got {self.served_model_name!r}"
            )
        self._resolve_api_key()

    def _check_dtype_and_device(self) -> None:
        from ..loading import DTYPES, resolve_device

        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.device is not None:
            resolve_device(self.device)  # an unknown name or a device this machine lacks

    def _resolve_api_key(self) -> None:
        source = "api_key"
        key = self.api_key
        if key is None and API_KEY_ENV in os.environ:
            key, source = os.environ[API_KEY_ENV], API_KEY_ENV
        if key is None:
            self._api_key_source: str | None = None
            return
        if not isinstance(key, str):
            raise TypeError(f"api_key must be a string or None, got {type(key).__name__}")
        where = f"{API_KEY_ENV} is set but" if source == API_KEY_ENV else "api_key (--api-key) is"
        if not key.strip():
            raise ValueError(
                f"{where} empty. An empty key would leave the endpoints open: set a real key, "
                f"or, to serve without auth, pass no key and unset {API_KEY_ENV}."
            )
        if key != key.strip():
            raise ValueError(
                f"{where} a key with leading or trailing whitespace, which no client can send "
                "in an Authorization header; strip it."
            )
        self.api_key = key
        self._api_key_source = source

    @property
    def auth_enabled(self) -> bool:
        """Whether the rerank endpoints and ``/info`` need the API key."""
        return bool(self.api_key)

    def build_scorer(self) -> CrossEncoderScorer:
        """Load the model as configured (raw logits; the server applies the sigmoid per call)."""
        from ..scorer import CrossEncoderScorer

        return CrossEncoderScorer(
            self.model,
            device=self.device,
            dtype=self.dtype,
            max_length=self.max_length,
            batch_size=self.batch_size,
            token_budget=self.token_budget,
            backend=self.backend,
            normalize=False,
        )

    def public(self) -> dict[str, Any]:
        """The settings without the API key (``"set"`` or ``None`` in its place)."""
        out = asdict(self)
        out["api_key"] = "set" if self.api_key else None
        return out


class ApiError(Exception):
    """An error answered as JSON: status code, message, and the request field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        kind: str = "invalid",
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.kind = kind
        self.close = close


class ModelLoadError(RerankerError, RuntimeError):
    """The model failed to load, so :func:`run_server` stopped the server (the cause is chained)."""


def _error_body(message: str, kind: str, field: str | None) -> dict[str, Any]:
    return {"error": message, "message": message, "error_type": kind, "field": field}


def _error_response(error: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    if error.close:
        headers["Connection"] = "close"
    return JSONResponse(
        _error_body(error.message, error.kind, error.field), error.status, headers=headers
    )


def _sigmoid(x: float) -> float:
    """Numerically stable logistic function of a finite ``x`` (the scorer's arithmetic)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _check_value(value: Any, field: str, depth: int = 0) -> None:
    """Refuse what the server could not tokenize or echo back intact, naming the field.

    Lone surrogates (no UTF-8 form), NaN and Infinity (JSON has no such numbers; they would come
    back as ``null``) and nesting deeper than :data:`MAX_DOCUMENT_DEPTH`.
    """
    if isinstance(value, str):
        match = _SURROGATE.search(value)
        if match:
            raise ApiError(
                422,
                f"{field} contains a lone UTF-16 surrogate (\\u{ord(match.group()):04x} at "
                f"character {match.start()}), which is not text and has no UTF-8 form; send "
                "valid Unicode (a surrogate pair such as \\ud83d\\ude00 is fine).",
                field=field,
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError(
                422,
                f"{field} is {value!r}; JSON has no NaN or Infinity and it could not be returned "
                "as sent. Send a number, null or a string.",
                field=field,
            )
    elif isinstance(value, (dict, list)):
        if depth >= MAX_DOCUMENT_DEPTH:
            raise ApiError(
                422,
                f"{field} is nested more than {MAX_DOCUMENT_DEPTH} levels deep (lists and "
                "objects inside a document); flatten it.",
                field=field,
            )
        if isinstance(value, dict):
            for key, item in value.items():
                _check_value(key, f"{field} (a key)", depth + 1)
                _check_value(item, f"{field}.{key}", depth + 1)
        else:
            for i, item in enumerate(value):
                _check_value(item, f"{field}[{i}]", depth + 1)


class _State:
    """What the app holds at run time: the scorer, the batcher, and the load status."""

    def __init__(self) -> None:
        self.scorer: CrossEncoderScorer | None = None
        self.batcher: DynamicBatcher | None = None
        self.load_error: str | None = None
        self.load_exception: BaseException | None = None


class _RequestGuard:
    """Pure ASGI middleware: reads each request body within a size and a time limit, and counts
    every HTTP request in the metrics.

    The body is read before the app sees the request, so the byte count covers chunked bodies
    (no ``Content-Length``) as they arrive: once over ``max_bytes`` the answer is 413 without
    reading the rest. A body that does not arrive in full within ``body_timeout_s`` of the
    headers is answered 408 and the connection is closed. The app then gets the body as one
    message (Starlette reads the whole body anyway before parsing JSON).
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
        endpoint = path if path in _ENDPOINTS else "other"
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
                await _error_response(outcome)(scope, receive, send_observed)
                return
            await self.app(scope, _replay(outcome, receive), send_observed)
        finally:
            self.observe(endpoint, status, time.perf_counter() - started)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | ApiError | None:
        length = _header(scope, b"content-length")
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
                        408,
                        f"The request body did not arrive within {self.body_timeout_s:g} s "
                        f"({total} bytes came); the connection is closed (server setting "
                        "request_body_timeout_s).",
                        field="body",
                        kind="request_timeout",
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
            413,
            f"{what}; the limit is {self.max_bytes} (server setting max_request_bytes). "
            "Split the request.",
            field="body",
            kind="payload_too_large",
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` as one message, then defers to the real one."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


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

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> uvicorn.run(create_app(ServerConfig(model="BAAI/bge-reranker-v2-m3")))  # doctest: +SKIP
    """
    config = config or ServerConfig()
    factory = scorer_factory or config.build_scorer
    metrics = ServerMetrics()
    state = _State()

    def on_batch(stats: BatchStats) -> None:
        metrics.observe_batch(requests=stats.requests, pairs=stats.pairs, seconds=stats.seconds)

    def set_threads() -> None:
        # torch's thread setting is per thread here: apply it where the model runs.
        if config.torch_threads is not None:
            import torch

            torch.set_num_threads(config.torch_threads)

    def load() -> None:
        try:
            set_threads()
            scorer = factory()
            batcher = DynamicBatcher(
                lambda pairs: scorer.score_pairs(pairs, normalize=False),
                max_batch_pairs=config.max_batch_pairs,
                max_wait_ms=config.max_batch_wait_ms,
                wait_fraction=config.batch_wait_fraction,
                enabled=config.batching,
                on_batch=on_batch,
                initializer=set_threads,
            )
            batcher.start()
        except Exception as error:
            state.load_error = f"{type(error).__name__}: {error}"
            state.load_exception = error
            if on_load_error is not None:
                logger.debug("Loading the model %r failed", config.model, exc_info=True)
                on_load_error(error)
            else:
                logger.error(
                    "Loading the model %r failed: %s (GET /health reports it; the server "
                    "cannot score until restarted)",
                    config.model,
                    state.load_error,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
            return
        state.scorer = scorer
        state.batcher = batcher
        metrics.track_queue(lambda: batcher.pending)
        metrics.model_loaded.set(1)
        logger.info("Model %r loaded; serving.", config.model)

    def log_auth() -> None:
        if config.auth_enabled:
            logger.info(
                "Auth on (key from %s): /rerank, /v1/rerank, /v2/rerank and /info need "
                "'Authorization: Bearer <key>'; /health and /metrics stay open.",
                config._api_key_source,
            )
        else:
            logger.info(
                "Auth off: no API key is set (--api-key or %s), so anyone who can reach the "
                "server can call every endpoint.",
                API_KEY_ENV,
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log_auth()
        loader = asyncio.get_running_loop().run_in_executor(None, load)
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; drain whatever is queued.
            await loader
            metrics.model_loaded.set(0)
            if state.batcher is not None:
                await asyncio.to_thread(state.batcher.close, config.drain_timeout_s)

    app = FastAPI(
        title="bge-rerank-plugins server",
        description="Cross-encoder reranking with TEI- and Cohere-compatible endpoints.",
        lifespan=lifespan,
    )
    app.state.rerank = state
    app.state.config = config
    app.state.metrics = metrics

    # ------------------------------------------------------------ middleware and errors
    app.add_middleware(
        _RequestGuard,
        max_bytes=config.max_request_bytes,
        body_timeout_s=config.request_body_timeout_s,
        observe=metrics.observe_request,
    )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        field = ".".join(location) or "body"
        message = f"{field}: {first.get('msg', 'invalid request')}"
        if first.get("type") == "json_invalid":
            message = f"The request body is not valid JSON ({first.get('msg', '')})."
            field = "body"
        body = _error_body(message, "validation", field)
        body["detail"] = [
            {"loc": list(p.get("loc", ())), "msg": p.get("msg"), "type": p.get("type")}
            for p in problems
        ]
        return JSONResponse(body, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own 4xx (unknown path, wrong method, a body it cannot parse) in this
        # server's error shape; ``detail`` is kept for FastAPI-style clients.
        message = str(error.detail)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "invalid")
        field = "body" if error.status_code == 400 else None
        body = _error_body(message, kind, field)
        body["detail"] = error.detail
        return JSONResponse(body, error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # The exception's text can hold source paths and internals: it goes to the log only.
        logger.exception("Request to %s failed", request.url.path)
        return JSONResponse(
            _error_body(
                f"Internal server error ({type(error).__name__}); the server log has the details.",
                "server_error",
                None,
            ),
            500,
        )

    # ------------------------------------------------------------ shared request steps
    def has_key(request: Request) -> bool:
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

    async def authorize(request: Request) -> None:
        if not has_key(request):
            raise ApiError(
                401,
                "Missing or wrong API key: send the header 'Authorization: Bearer <key>'.",
                field="Authorization",
                kind="unauthorized",
            )

    def check_limits(query: str, texts: list[str], field: str) -> None:
        if len(texts) > config.max_documents:
            raise ApiError(
                413,
                f"{field} has {len(texts)} items; the limit is {config.max_documents} per "
                "request (server setting max_documents). Split the request.",
                field=field,
                kind="payload_too_large",
            )
        if len(query) > config.max_text_chars:
            raise ApiError(
                413,
                f"query has {len(query)} characters; the limit is {config.max_text_chars} "
                "(server setting max_text_chars).",
                field="query",
                kind="payload_too_large",
            )
        for i, text in enumerate(texts):
            if len(text) > config.max_text_chars:
                raise ApiError(
                    413,
                    f"{field}[{i}] has {len(text)} characters; the limit is "
                    f"{config.max_text_chars} (server setting max_text_chars). Split long "
                    "documents into chunks.",
                    field=f"{field}[{i}]",
                    kind="payload_too_large",
                )

    async def raw_scores(query: str, texts: list[str], field: str) -> list[float]:
        """The model's raw scores for (query, text) pairs, all finite, or an ApiError."""
        batcher = state.batcher
        if batcher is None:
            message = "The model is still loading; retry shortly."
            if state.load_error:
                message = f"The model failed to load: {state.load_error}"
            raise ApiError(503, message, kind="unavailable")
        try:
            scores = await batcher.score([(query, text) for text in texts])
        except BatcherClosedError:
            raise ApiError(503, "The server is shutting down.", kind="unavailable") from None
        except NonFiniteScoreError as error:
            logger.error("Non-finite scores for a request: %s", error)
            raise ApiError(500, str(error), kind="non_finite_score") from None
        except RerankerError as error:
            logger.error("Scoring a request failed: %s", error)
            raise ApiError(500, str(error), kind="model_error") from None
        except Exception as error:
            logger.exception("Scoring a request failed")
            raise ApiError(
                500, f"Scoring failed: {type(error).__name__}: {error}", kind="server_error"
            ) from None
        bad = [i for i, score in enumerate(scores) if not math.isfinite(score)]
        if bad:
            # A scorer that does not check for itself (a custom factory, another backend): a NaN
            # would sort arbitrarily and go out as null, so no scores go out at all.
            message = (
                f"The model {config.model!r} gave a NaN or infinite score to {len(bad)} of "
                f"{len(scores)} pairs (first: {field}[{bad[0]}]); no scores were returned. The "
                "weights are most likely broken (a diverged fine-tune, a bad conversion) or "
                "half precision overflowed: check the model with dtype='float32'."
            )
            logger.error("%s", message)
            raise ApiError(500, message, kind="non_finite_score")
        return scores

    def ranked(scores: list[float]) -> list[int]:
        return sorted(range(len(scores)), key=lambda i: (-scores[i], i))

    def document_texts(
        documents: list[Any], rank_fields: list[str] | None, return_documents: bool
    ) -> list[str]:
        fields = rank_fields or ["text"]
        texts = []
        for i, doc in enumerate(documents):
            _check_value(doc, f"documents[{i}]")
            if isinstance(doc, str):
                texts.append(doc)
                continue
            parts = []
            for name in fields:
                value = doc.get(name)
                if not isinstance(value, str):
                    raise ApiError(
                        422,
                        f"documents[{i}] has no string field {name!r}; object documents need "
                        f"the fields named by rank_fields (default ['text']).",
                        field=f"documents[{i}].{name}",
                    )
                parts.append(value)
            if return_documents and "text" in doc and not isinstance(doc["text"], str):
                raise ApiError(
                    422,
                    f"documents[{i}].text is {type(doc['text']).__name__}, not a string; a "
                    "returned document's text field must be a string (rename the field, or "
                    "send return_documents=false).",
                    field=f"documents[{i}].text",
                )
            texts.append("\n".join(parts))
        return texts

    def returned_document(doc: Any, text: str) -> dict[str, Any]:
        if isinstance(doc, dict):
            return {**doc, "text": doc.get("text", text)}
        return {"text": text}

    async def cohere_rerank(
        query: str,
        documents: list[Any],
        top_n: int | None,
        return_documents: bool,
        rank_fields: list[str] | None,
        version: str,
    ) -> dict[str, Any]:
        _check_value(query, "query")
        texts = document_texts(documents, rank_fields, return_documents)
        check_limits(query, texts, "documents")
        scores = [_sigmoid(x) for x in await raw_scores(query, texts, "documents")]
        order = ranked(scores)
        if top_n is not None:
            order = order[:top_n]
        results = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if return_documents:
                item["document"] = returned_document(documents[i], texts[i])
            results.append(item)
        return {
            "id": str(uuid.uuid4()),
            "results": results,
            "meta": {
                "api_version": {"version": version},
                "billed_units": {"search_units": float(max(1, math.ceil(len(texts) / 100)))},
            },
        }

    # ------------------------------------------------------------ routes
    @app.post(
        "/rerank",
        response_model=list[TEIRank],
        response_model_exclude_none=True,
        dependencies=[Depends(authorize)],
        summary="Rerank (text-embeddings-inference shape)",
    )
    async def rerank_tei(body: TEIRerankRequest) -> list[dict[str, Any]]:
        _check_value(body.query, "query")
        for i, text in enumerate(body.texts):
            _check_value(text, f"texts[{i}]")
        check_limits(body.query, body.texts, "texts")
        raw = await raw_scores(body.query, body.texts, "texts")
        scores = raw if body.raw_scores else [_sigmoid(x) for x in raw]
        out = []
        for i in ranked(scores):
            item: dict[str, Any] = {"index": i, "score": scores[i]}
            if body.return_text:
                item["text"] = body.texts[i]
            out.append(item)
        return out

    @app.post(
        "/v1/rerank",
        response_model=CohereRerankResponse,
        response_model_exclude_none=True,
        dependencies=[Depends(authorize)],
        summary="Rerank (Cohere v1 shape)",
    )
    async def rerank_v1(body: CohereV1RerankRequest) -> dict[str, Any]:
        return await cohere_rerank(
            body.query, body.documents, body.top_n, body.return_documents, body.rank_fields, "1"
        )

    @app.post(
        "/v2/rerank",
        response_model=CohereRerankResponse,
        response_model_exclude_none=True,
        dependencies=[Depends(authorize)],
        summary="Rerank (Cohere v2 shape)",
    )
    async def rerank_v2(body: CohereV2RerankRequest) -> dict[str, Any]:
        return await cohere_rerank(
            body.query, body.documents, body.top_n, body.return_documents, None, "2"
        )

    @app.get("/health", summary="200 once the model is loaded, 503 before")
    async def health(request: Request) -> JSONResponse:
        # Open for probes; with auth on, only a client with the key learns the model and errors.
        detailed = has_key(request)
        if state.batcher is not None:
            return JSONResponse({"status": "ok", **({"model": config.model} if detailed else {})})
        if state.load_error:
            return JSONResponse(
                {"status": "error", **({"error": state.load_error} if detailed else {})}, 503
            )
        return JSONResponse({"status": "loading"}, 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/info", summary="Model and server settings", dependencies=[Depends(authorize)])
    async def info() -> dict[str, Any]:
        scorer = state.scorer
        return {
            "model_id": config.served_model_name or config.model,
            "model_type": "reranker",
            "loaded": scorer is not None,
            "device": scorer.device if scorer is not None else None,
            "max_input_length": scorer.model_max_length if scorer is not None else None,
            "auth": config.auth_enabled,
            "settings": config.public(),
        }

    return app


def _with_header_timeout(base: type[asyncio.Protocol], timeout_s: float) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's HTTP protocol) closing connections whose request headers stall.

    A timer runs from the moment a connection opens, and again from the end of each response,
    until the next request's headers are complete (uvicorn then starts a request cycle). If it
    fires first, the connection is closed: a client that connects and sends nothing, or sends
    part of its headers, cannot hold a connection for ever. uvicorn's own ``timeout_keep_alive``
    only covers idle connections that have sent no byte since their last response.
    """

    class HeaderTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            if self.transport is None or self.transport.is_closing():
                return
            cycle = getattr(self, "cycle", None)
            self._header_timer = self.loop.call_later(timeout_s, self._header_timed_out, cycle)

        def _header_timed_out(self, armed_cycle: Any) -> None:
            self._header_timer = None
            cycle = getattr(self, "cycle", None)
            if cycle is not armed_cycle:
                return  # a request arrived since; its response arms the timer again
            if cycle is not None and not cycle.response_complete:
                return  # a request is in flight (its body has a timeout of its own)
            if not self.transport.is_closing():
                logger.info(
                    "Closed a connection from %s: no complete request headers within %g s "
                    "(server setting request_header_timeout_s).",
                    getattr(self, "client", None),
                    timeout_s,
                )
                self.transport.close()

    HeaderTimeoutProtocol.__name__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol


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
    the server exit (``server.config.app.state.rerank.load_exception`` then holds the error).
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
        protocol = _with_header_timeout(AutoHTTPProtocol, config.request_header_timeout_s)
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
    if not config.auth_enabled and host not in ("127.0.0.1", "localhost", "::1"):
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
    state: _State = server.config.app.state.rerank
    if state.load_exception is not None:
        raise ModelLoadError(
            f"The model {config.model!r} failed to load, so the server stopped: {state.load_error}"
        ) from state.load_exception
