"""The server's endpoints, one :class:`fastapi.APIRouter` per area, handlers at module level.

* :mod:`.tei`: ``POST /rerank`` (text-embeddings-inference shape);
* :mod:`.cohere`: ``POST /v1/rerank``, ``POST /v2/rerank`` (Cohere shapes);
* :mod:`.vllm`: ``POST /score``, ``POST /v1/score`` (vLLM shape), ``GET /v1/models`` (OpenAI);
* :mod:`.ops`: ``GET /health``, ``/metrics``, ``/info``.

Handlers take the :class:`~bge_rerank_plugins.server.service.ScorerService` through the
:func:`~bge_rerank_plugins.server.service.get_service` dependency, so any of them can be mounted
on an app that holds a service at ``app.state.service``.
"""

from __future__ import annotations

from . import cohere, ops, tei, vllm

__all__ = ["ROUTERS", "cohere", "ops", "tei", "vllm"]

#: The routers in the order the app includes them.
ROUTERS = (tei.router, cohere.router, vllm.router, ops.router)
