"""``GET /health``, ``/metrics`` and ``/info``: probes, Prometheus and the server's settings."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ..auth import has_key, require_api_key
from ..service import ScorerService, get_service

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
    return JSONResponse({"status": "loading"}, 503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(service: Annotated[ScorerService, Depends(get_service)]) -> Response:
    """The Prometheus text exposition of the server's metrics."""
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/info", summary="Model and server settings", dependencies=[Depends(require_api_key)])
async def info(service: Annotated[ScorerService, Depends(get_service)]) -> dict[str, Any]:
    """The model, its device and input limit, and the settings (without the API key)."""
    scorer = service.scorer
    config = service.config
    return {
        "model_id": config.served_model_name or config.model,
        "model_type": "reranker",
        "loaded": scorer is not None,
        "device": scorer.device if scorer is not None else None,
        "max_input_length": scorer.model_max_length if scorer is not None else None,
        "auth": config.auth_enabled,
        "settings": config.public(),
    }
