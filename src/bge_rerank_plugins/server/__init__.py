"""HTTP rerank service with TEI- and Cohere-compatible endpoints and dynamic batching.

Needs the ``serve`` extra (``pip install "bge-rerank-plugins[serve]"``). Start it with
``bge-rerank serve --model DIR`` or from Python:

>>> from bge_rerank_plugins.server import ServerConfig, run_server
>>> run_server(ServerConfig(model="BAAI/bge-reranker-v2-m3"), port=8080)  # doctest: +SKIP
"""

from __future__ import annotations

from .app import (
    API_KEY_ENV,
    ApiError,
    ModelLoadError,
    ServerConfig,
    build_server,
    create_app,
    run_server,
)
from .batcher import BatchStats, DynamicBatcher

__all__ = [
    "API_KEY_ENV",
    "ApiError",
    "BatchStats",
    "DynamicBatcher",
    "ModelLoadError",
    "ServerConfig",
    "build_server",
    "create_app",
    "run_server",
]
