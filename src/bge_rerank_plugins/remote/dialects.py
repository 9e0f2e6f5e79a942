"""The three wire formats a :class:`~bge_rerank_plugins.remote.RemoteScorer` speaks.

* ``"tei"``: text-embeddings-inference ``POST /rerank`` (``{"query", "texts", "raw_scores"}`` ->
  ``[{"index", "score"}]``); raw logits on request.
* ``"cohere"``: Cohere v2 ``POST /v2/rerank`` (``{"model", "query", "documents", "top_n"}`` ->
  ``{"results": [{"index", "relevance_score"}]}``); scores in [0, 1] only.
* ``"vllm"``: vLLM ``POST /score`` (``{"model", "text_1", "text_2", "use_activation"}`` ->
  ``{"data": [{"index", "score"}]}``); one request may hold many queries.

``bge-rerank serve`` speaks all three. Every request asks for every document back (Cohere's
``top_n`` is the chunk's size), so each chunk's scores cover the chunk exactly.

>>> split_url("http://host:8080/v2/rerank")
('http://host:8080', 'cohere', '/v2/rerank')
>>> split_url("http://host:8080")
('http://host:8080', None, None)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import RerankerError

__all__ = ["DIALECTS", "ENDPOINTS", "parse_scores", "request_body", "split_url"]

#: The dialects, and the endpoint each one calls on a server's base URL.
DIALECTS = ("tei", "cohere", "vllm")
ENDPOINTS = {"tei": "/rerank", "cohere": "/v2/rerank", "vllm": "/score"}

#: Endpoint paths a URL may end with, and the dialect each one implies.
KNOWN_PATHS = {
    "/rerank": "tei",
    "/v1/rerank": "cohere",
    "/v2/rerank": "cohere",
    "/score": "vllm",
    "/v1/score": "vllm",
}


def split_url(url: str) -> tuple[str, str | None, str | None]:
    """(base URL, dialect the path implies or None, endpoint path or None).

    A URL that ends with a known endpoint path (``/rerank``, ``/v1/rerank``, ``/v2/rerank``,
    ``/score``, ``/v1/score``) is that endpoint; any other URL is a server's base.
    """
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    for suffix in sorted(KNOWN_PATHS, key=len, reverse=True):
        if path.endswith(suffix):
            base = urlunsplit((parts.scheme, parts.netloc, path[: -len(suffix)], "", ""))
            return base, KNOWN_PATHS[suffix], suffix
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")), None, None


def request_body(
    dialect: str, model: str | None, pairs: list[tuple[str, str]], normalize: bool
) -> dict[str, Any]:
    """The JSON body that scores ``pairs`` (one query for ``tei`` and ``cohere``)."""
    queries = {q for q, _ in pairs}
    texts = [t for _, t in pairs]
    if dialect == "vllm":
        first: str | list[str] = pairs[0][0] if len(queries) == 1 else [q for q, _ in pairs]
        body: dict[str, Any] = {"text_1": first, "text_2": texts, "use_activation": normalize}
    elif dialect == "tei":
        body = {"query": pairs[0][0], "texts": texts, "raw_scores": not normalize}
        body["truncate"] = True  # as the in-process scorer: cut the passage, keep the query
    else:
        body = {"query": pairs[0][0], "documents": texts, "top_n": len(texts)}
    if model is not None and dialect != "tei":
        body["model"] = model
    return body


def _items(dialect: str, payload: Any) -> list[Any]:
    if dialect == "tei":
        return payload if isinstance(payload, list) else []
    key = "data" if dialect == "vllm" else "results"
    items = payload.get(key) if isinstance(payload, dict) else None
    return items if isinstance(items, list) else []


def parse_scores(dialect: str, payload: Any, count: int, url: str) -> list[float]:
    """The scores of one response in input order; a :class:`RerankerError` unless it holds
    exactly one finite-typed score for each of the ``count`` inputs."""
    key = "relevance_score" if dialect == "cohere" else "score"
    scores: list[float | None] = [None] * count
    for item in _items(dialect, payload):
        index = item.get("index") if isinstance(item, dict) else None
        value = item.get(key) if isinstance(item, dict) else None
        if (
            isinstance(index, int)
            and 0 <= index < count
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ):
            scores[index] = float(value)
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        raise RerankerError(
            f"{url} answered without a {key!r} for {len(missing)} of {count} inputs (first: "
            f"index {missing[0]}); the response does not look like the {dialect!r} dialect. "
            "Pass dialect= matching the server (tei, cohere or vllm)."
        )
    return scores  # type: ignore[return-value]
