"""HTTP rerank service with TEI-, Cohere- and vLLM-compatible endpoints and dynamic batching.

Needs the ``serve`` extra (``pip install "bge-rerank-plugins[serve]"``). Start it with
``bge-rerank serve --model DIR`` or from Python:

>>> from bge_rerank_plugins.server import ServerConfig, run_server
>>> run_server(ServerConfig(model="BAAI/bge-reranker-v2-m3"), port=8080)  # doctest: +SKIP

The package, by job: :mod:`.config` (``ServerConfig``), :mod:`.errors` (``ApiError``, the one
error-kind-to-status table, the exception handlers), :mod:`.service` (``ScorerService``: loading,
batching, limits, raw scores), :mod:`.auth`, :mod:`.checks`, :mod:`.routes` (one router per
area), :mod:`.middleware` (body size and time), :mod:`.protocol` (header timeout) and
:mod:`.app` (``create_app``, ``build_server``, ``run_server``).
"""

from __future__ import annotations

from .app import build_server, create_app, run_server
from .batcher import BatchStats, DynamicBatcher
from .config import API_KEY_ENV, ServerConfig
from .errors import ApiError, ErrorKind, ModelLoadError
from .service import ScorerService

__all__ = [
    "API_KEY_ENV",
    "ApiError",
    "BatchStats",
    "DynamicBatcher",
    "ErrorKind",
    "ModelLoadError",
    "ScorerService",
    "ServerConfig",
    "build_server",
    "create_app",
    "run_server",
]
