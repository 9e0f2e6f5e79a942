"""Prometheus metrics of the rerank server (``GET /metrics``).

Each app gets its own :class:`prometheus_client.CollectorRegistry`, so several servers (or tests)
in one process never share counters.

Exported series (all prefixed ``bge_rerank_``):

* ``requests_total{endpoint, status}``: HTTP requests by route and status code.
* ``request_latency_seconds{endpoint}``: histogram of request latency, arrival to response.
* ``pairs_scored_total``: (query, passage) pairs scored by the model.
* ``batch_pairs`` / ``batch_requests``: histograms of pairs and of requests per merged batch.
* ``batch_seconds``: histogram of model time per merged batch.
* ``queue_depth``: requests waiting for the batcher.
* ``model_loaded``: 1 once the model is ready.
* ``deadline_fallbacks_total``: requests not scored within ``score_timeout_s`` (answered 503
  ``deadline_exceeded``, so the client keeps its first-stage order: ``Ranked.reranked`` is
  False on its side, :mod:`bge_rerank_plugins.ranking`); counted by
  :meth:`ServerMetrics.observe_deadline_fallback`.

>>> m = ServerMetrics()
>>> m.observe_batch(requests=2, pairs=40, seconds=0.1)
>>> b"bge_rerank_pairs_scored_total 40.0" in m.render()[0]
True
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_PAIR_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServerMetrics:
    """The server's counters and histograms, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "bge_rerank_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "bge_rerank_request_latency_seconds",
            "Request latency in seconds, arrival to response.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pairs = Counter(
            "bge_rerank_pairs_scored", "Query-passage pairs scored by the model.", registry=r
        )
        self.batch_pairs = Histogram(
            "bge_rerank_batch_pairs", "Pairs per merged batch.", buckets=_PAIR_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "bge_rerank_batch_requests",
            "Requests merged into one batch.",
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "bge_rerank_batch_seconds",
            "Model time per merged batch in seconds.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "bge_rerank_queue_depth", "Requests waiting for the batcher.", registry=r
        )
        self.model_loaded = Gauge(
            "bge_rerank_model_loaded", "1 once the model is loaded and serving.", registry=r
        )
        self.deadline_fallbacks = Counter(
            "bge_rerank_deadline_fallbacks",
            "Requests not scored within score_timeout_s (answered 503 deadline_exceeded; the "
            "client keeps its first-stage order).",
            registry=r,
        )

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency."""
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def observe_batch(self, *, requests: int, pairs: int, seconds: float) -> None:
        """Record one merged model batch."""
        self.pairs.inc(pairs)
        self.batch_pairs.observe(pairs)
        self.batch_requests.observe(requests)
        self.batch_seconds.observe(seconds)

    def observe_deadline_fallback(self) -> None:
        """Count one ranking that fell back to the first-stage order at its deadline."""
        self.deadline_fallbacks.inc()

    def track_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from ``depth()`` at each scrape."""
        self.queue_depth.set_function(depth)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus text format, and their content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
