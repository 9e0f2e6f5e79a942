"""``GET /health``, ``/metrics`` and ``/info``: probes, Prometheus and the server's settings.

``/info`` has text-embeddings-inference's shape (``model_type`` is ``{"reranker": {"id2label":
..., "label2id": ...}}``, ``max_input_length``, ``max_client_batch_size``, ``auto_truncate``...),
which TEI clients parse (``huggingface_hub.InferenceClient.get_endpoint_info``, and
:class:`~bge_rerank_plugins.remote.RemoteScorer` learns its request size from it), plus this
server's own keys (``loaded``, ``device``, ``auth``, ``settings``). TEI's
``max_concurrent_requests`` is left out: this server sets no such cap.
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ..auth import has_key, require_api_key
from ..service import LOADING_RETRY_AFTER_S, ScorerService, get_service

__all__ = ["health", "info", "metrics", "router"]

router = APIRouter()


@router.get("/health", summary="200 once the model is loaded, 503 before")
async def health(
    request: Request, service: Annotated[ScorerService, Depends(get_service)]
) -> JSONResponse:
    """200 once the model is loaded, 503 while loading or after a failed load."""
    # Open for probes; with auth on, only a client with the key learns the model and errors.
    detailed = has_key(service.config, request)
    if service.batcher is not None:
        return JSONResponse(
            {"status": "ok", **({"model": service.config.model} if detailed else {})}
        )
    if service.load_error:
        return JSONResponse(
            {"status": "error", **({"error": service.load_error} if detailed else {})}, 503
        )
    return JSONResponse(
        {"status": "loading"}, 503, headers={"Retry-After": str(LOADING_RETRY_AFTER_S)}
    )


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(service: Annotated[ScorerService, Depends(get_service)]) -> Response:
    """The Prometheus text exposition of the server's metrics."""
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)


def _version() -> str:
    try:
        return metadata.version("bge-rerank-plugins")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


#: A one-logit classifier's labels as ``transformers`` names them (TEI reports them).
RERANKER_LABELS = {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}


@router.get("/info", summary="Model and server settings", dependencies=[Depends(require_api_key)])
async def info(service: Annotated[ScorerService, Depends(get_service)]) -> dict[str, Any]:
    """The model and the server's limits in TEI's shape, plus this server's own settings."""
    scorer = service.scorer
    config = service.config
    max_input = scorer.model_max_length if scorer is not None else None
    batch_size = getattr(scorer, "batch_size", None)
    budget = getattr(scorer, "token_budget", None) or (
        batch_size * max_input if batch_size and max_input else None
    )
    dtype = str(getattr(scorer, "dtype", config.dtype)).removeprefix("torch.")
    return {
        "model_id": config.served_model_name or config.model,
        "model_sha": None,
        "model_dtype": dtype,
        "model_type": {"reranker": RERANKER_LABELS},
        "max_input_length": max_input,
        "max_batch_tokens": budget,
        "max_batch_requests": None,
        "max_client_batch_size": config.max_documents,
        "auto_truncate": True,
        "tokenization_workers": 1,
        "version": _version(),
        "sha": None,
        "docker_label": None,
        "loaded": scorer is not None,
        "device": scorer.device if scorer is not None else None,
        "auth": config.auth_enabled,
        "settings": config.public(),
    }
