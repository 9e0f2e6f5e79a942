"""The rerank HTTP service: a FastAPI app factory and a uvicorn runner.

Endpoints:

* ``POST /rerank``: Hugging Face text-embeddings-inference (TEI) shape.
* ``POST /v1/rerank``, ``POST /v2/rerank``: Cohere shapes (the ``cohere`` SDK's ``Client`` and
  ``ClientV2`` work when pointed at the server with ``base_url``).
* ``GET /health``: 200 once the model is loaded, 503 before (or if loading failed).
* ``GET /metrics``: Prometheus text format.
* ``GET /info``: the model and the server's limits and batching settings.

The model is loaded once, in the background, when the app starts; requests are scored by one worker
thread that merges concurrent requests into shared batches (see :mod:`.batcher`).

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
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ..backends import check_backend
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
    from ..scorer import CrossEncoderScorer

__all__ = ["API_KEY_ENV", "ApiError", "ServerConfig", "create_app", "run_server"]

logger = logging.getLogger(__name__)

#: Environment variable read for the bearer API key when none is given.
API_KEY_ENV = "BGE_RERANK_API_KEY"

_ENDPOINTS = {"/rerank", "/v1/rerank", "/v2/rerank", "/health", "/metrics", "/info"}


@dataclass
class ServerConfig:
    """Settings of the rerank server.

    Args:
        model: Hub id or local directory of the cross-encoder.
        device, dtype, max_length, batch_size, token_budget, backend: passed to
            :class:`~bge_rerank_plugins.CrossEncoderScorer` (``batch_size`` is the most pairs per
            forward pass; ``backend="torch-int8"`` served 1.6x the pairs/s of float32 on
            a CPU with VNNI, with approximate scores: docs/benchmarks.md).
        max_batch_pairs: most pairs the batcher merges from concurrent requests into one scorer
            call (the scorer then length-sorts them and cuts them into forward passes).
        max_batch_wait_ms: longest the batcher waits for more requests after the first one.
        batch_wait_fraction: the batcher waits this fraction of the recent model time per
            batch, capped at ``max_batch_wait_ms`` (so a slow CPU batch waits long enough to
            merge the next wave of requests and a fast GPU batch barely waits); ``None``: always
            wait ``max_batch_wait_ms``.
        batching: ``False`` scores each request on its own (baseline for benchmarks).
        max_documents: most documents (texts) in one request; more -> 413.
        max_text_chars: most characters in the query or any one document; more -> 413.
        max_request_bytes: largest request body accepted; larger -> 413.
        api_key: when set, rerank endpoints require ``Authorization: Bearer <api_key>``;
            ``None`` reads ``BGE_RERANK_API_KEY`` (empty or unset: no auth).
        served_model_name: the model name reported in ``/info`` (default: ``model``).
        torch_threads: CPU threads torch uses for the model (``torch.set_num_threads``; process
            wide). ``None`` keeps torch's default (one per core). On a busy or shared CPU, fewer
            threads than cores often score faster and leave a core for the HTTP side.
        drain_timeout_s: how long shutdown waits for queued requests to be scored.
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

    def __post_init__(self) -> None:
        for name in ("max_batch_pairs", "max_documents", "max_text_chars", "max_request_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.torch_threads is not None and (
            not isinstance(self.torch_threads, int) or self.torch_threads < 1
        ):
            raise ValueError(
                f"torch_threads must be a positive int or None, got {self.torch_threads!r}"
            )
        check_backend(self.backend)
        if self.max_batch_wait_ms < 0:
            raise ValueError(f"max_batch_wait_ms must be >= 0, got {self.max_batch_wait_ms!r}")
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None

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
        """The settings without the API key."""
        out = asdict(self)
        out["api_key"] = "set" if self.api_key else None
        return out


class ApiError(Exception):
    """An error answered as JSON: status code, message, and the request field at fault."""

    def __init__(
        self, status: int, message: str, *, field: str | None = None, kind: str = "invalid"
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.kind = kind


def _error_body(message: str, kind: str, field: str | None) -> dict[str, Any]:
    return {"error": message, "message": message, "error_type": kind, "field": field}


def _error_response(error: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(
        _error_body(error.message, error.kind, error.field), error.status, headers=headers
    )


def _sigmoid(x: float) -> float:
    # Numerically stable, the same arithmetic as the scorer's normalization.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class _State:
    """What the app holds at run time: the scorer, the batcher, and the load status."""

    def __init__(self) -> None:
        self.scorer: CrossEncoderScorer | None = None
        self.batcher: DynamicBatcher | None = None
        self.load_error: str | None = None


def create_app(
    config: ServerConfig | None = None,
    *,
    scorer_factory: Callable[[], CrossEncoderScorer] | None = None,
) -> FastAPI:
    """Build the FastAPI app; the model loads in the background when the app starts.

    Args:
        config: server settings (default :class:`ServerConfig()`).
        scorer_factory: builds the scorer (default ``config.build_scorer``). The server asks
            it for raw logits and applies the sigmoid per request, so its ``normalize`` setting
            does not matter. Tests use it to control when loading finishes.

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
        except Exception as error:
            logger.exception("Loading the model %r failed", config.model)
            state.load_error = f"{type(error).__name__}: {error}"
            return
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
        state.scorer = scorer
        state.batcher = batcher
        metrics.track_queue(lambda: batcher.pending)
        metrics.model_loaded.set(1)
        logger.info("Model %r loaded; serving.", config.model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        path = request.url.path
        endpoint = path if path in _ENDPOINTS else "other"
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_request_bytes:
            response: Response = _error_response(
                ApiError(
                    413,
                    f"The request body has {length} bytes; the limit is "
                    f"{config.max_request_bytes} (server setting max_request_bytes).",
                    field="body",
                    kind="payload_too_large",
                )
            )
        else:
            try:
                response = await call_next(request)
            except Exception:
                metrics.observe_request(endpoint, 500, time.perf_counter() - started)
                raise
        metrics.observe_request(endpoint, response.status_code, time.perf_counter() - started)
        return response

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

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("Request to %s failed", request.url.path)
        return JSONResponse(
            _error_body(f"{type(error).__name__}: {error}", "server_error", None), 500
        )

    # ------------------------------------------------------------ shared request steps
    async def authorize(request: Request) -> None:
        if not config.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), config.api_key.encode()
        ):
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

    async def raw_scores(query: str, texts: list[str]) -> list[float]:
        batcher = state.batcher
        if batcher is None:
            message = "The model is still loading; retry shortly."
            if state.load_error:
                message = f"The model failed to load: {state.load_error}"
            raise ApiError(503, message, kind="unavailable")
        try:
            return await batcher.score([(query, text) for text in texts])
        except BatcherClosedError:
            raise ApiError(503, "The server is shutting down.", kind="unavailable") from None

    def ranked(scores: list[float]) -> list[int]:
        return sorted(range(len(scores)), key=lambda i: (-scores[i], i))

    def document_texts(documents: list[Any], rank_fields: list[str] | None) -> list[str]:
        fields = rank_fields or ["text"]
        texts = []
        for i, doc in enumerate(documents):
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
        texts = document_texts(documents, rank_fields)
        check_limits(query, texts, "documents")
        scores = [_sigmoid(x) for x in await raw_scores(query, texts)]
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
        check_limits(body.query, body.texts, "texts")
        raw = await raw_scores(body.query, body.texts)
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
    async def health() -> JSONResponse:
        if state.batcher is not None:
            return JSONResponse({"status": "ok", "model": config.model})
        if state.load_error:
            return JSONResponse({"status": "error", "error": state.load_error}, 503)
        return JSONResponse({"status": "loading"}, 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/info", summary="Model and server settings")
    async def info() -> dict[str, Any]:
        scorer = state.scorer
        return {
            "model_id": config.served_model_name or config.model,
            "model_type": "reranker",
            "loaded": scorer is not None,
            "device": scorer.device if scorer is not None else None,
            "max_input_length": scorer.model_max_length if scorer is not None else None,
            "settings": config.public(),
        }

    return app


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

    Example:
        >>> run_server(ServerConfig(model="BAAI/bge-reranker-v2-m3"), port=8080)  # doctest: +SKIP
    """
    import uvicorn

    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout_s,
    )
