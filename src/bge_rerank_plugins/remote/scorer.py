"""``RemoteScorer``: the :class:`~bge_rerank_plugins.CrossEncoderScorer` API, scored by a rerank
server (``bge-rerank serve``, text-embeddings-inference, Cohere, vLLM) over HTTP."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from ..fields import as_passages, check_query, pair_texts, passage_texts
from ..runtime.deadline import check_deadline
from .connection import DEFAULT_MAX_BATCH, Connection
from .dialects import DIALECTS, parse_scores, request_body, split_url
from .http import RemoteRerankError
from .rank import arank_remote, rank_remote, to_logits

if TYPE_CHECKING:
    from ..fusion import FusionConfig
    from ..ranking import Ranked

__all__ = ["DEFAULT_MAX_BATCH", "MAX_IN_FLIGHT", "RemoteScorer"]

#: Most requests one async call has in flight at once.
MAX_IN_FLIGHT = 8


def check_normalize(normalize: Any, name: str = "normalize") -> None:
    """A bool, nothing else: ``"calibrated"`` needs the model folder's calibration file, which a
    server does not expose."""
    if not isinstance(normalize, bool):
        raise TypeError(
            f"{name} must be True (sigmoid scores in [0, 1]) or False (raw logits) for a "
            f"RemoteScorer, got {type(normalize).__name__} {normalize!r}; 'calibrated' needs the "
            "model folder's reranker_calibration.json, so calibrate with an in-process scorer."
        )


def _positive_int(name: str, value: Any, allow_none: bool, fix: str) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < (0 if name == "max_retries" else 1):
        least = 0 if name == "max_retries" else 1
        raise ValueError(f"{name} must be >= {least}, got {value}; {fix}")


class RemoteScorer:
    """Score (query, passage) pairs on a rerank server, with the scorer's API.

    ``score``, ``score_pairs``, ``score_many`` and ``rank`` return what
    :class:`~bge_rerank_plugins.CrossEncoderScorer`'s do (lists of floats in input order,
    :class:`~bge_rerank_plugins.Ranked` tuples best first), and ``ascore``, ``ascore_pairs``,
    ``ascore_many`` and ``arank`` are their async forms on :class:`httpx.AsyncClient` (no
    thread per call; a call's requests go out concurrently, at most :data:`MAX_IN_FLIGHT`).

    Args:
        url: the server's base URL (``http://host:8080``) or an endpoint's full URL
            (``.../rerank``: TEI, ``.../v1/rerank`` or ``.../v2/rerank``: Cohere,
            ``.../score`` or ``.../v1/score``: vLLM), whose path then sets the dialect.
        dialect: ``"tei"``, ``"cohere"``, ``"vllm"`` or ``"auto"``: the URL's path, else one
            probe of ``GET /info`` (TEI's, and ``bge-rerank serve``'s) then ``GET /v1/models``
            (vLLM), else Cohere.
        model: the model name sent to Cohere and vLLM servers (TEI serves one model).
        api_key: sent as ``Authorization: Bearer <api_key>``.
        timeout: seconds per HTTP request (connect, read and write).
        max_batch: most texts per request; a call with more is split and the scores put back in
            input order. ``None``: the server's ``max_client_batch_size`` from ``/info`` when it
            has one, else :data:`DEFAULT_MAX_BATCH`.
        max_retries: times a 429 or 503 (or a refused connection) is retried, waiting as
            ``Retry-After`` says or backing off from 0.5 s; then a
            :class:`~bge_rerank_plugins.remote.RemoteRerankError`.
        normalize: ``True``: sigmoid scores in [0, 1]; ``False``: raw logits (TEI's
            ``raw_scores``, vLLM's ``use_activation=false``; the Cohere dialect has none).
        transport, async_transport: an :class:`httpx.BaseTransport` /
            :class:`httpx.AsyncBaseTransport` to send through (``httpx.MockTransport`` in tests).

    >>> from bge_rerank_plugins.remote import RemoteScorer
    >>> scorer = RemoteScorer("http://127.0.0.1:8080", max_batch=16)  # doctest: +SKIP
    >>> scorer.rank("what is a panda?", ["A bear.", "A library."], top_k=1)  # doctest: +SKIP
    [Ranked(index=0, score=0.98, passage='A bear.')]
    """

    def __init__(
        self,
        url: str,
        *,
        dialect: str = "auto",
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_batch: int | None = None,
        max_retries: int = 3,
        normalize: bool = True,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
        if dialect not in ("auto", *DIALECTS):
            raise ValueError(f"dialect must be one of auto, {', '.join(DIALECTS)}; got {dialect!r}")
        base, implied, endpoint = split_url(url)
        if dialect != "auto" and implied is not None and implied != dialect:
            raise ValueError(
                f"url {url!r} is a {implied} endpoint but dialect={dialect!r}; pass the "
                "server's base URL, or dialect='auto'."
            )
        for name, value in (("model", model), ("api_key", api_key)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        _positive_int("max_batch", max_batch, True, "it is the most texts per request.")
        _positive_int("max_retries", max_retries, False, "0 turns retries off.")
        check_normalize(normalize)
        if dialect == "cohere" and not normalize:
            raise ValueError(self._no_raw_scores())
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise TypeError(f"transport must be an httpx.BaseTransport, got {transport!r}")
        if async_transport is not None and not isinstance(
            async_transport, httpx.AsyncBaseTransport
        ):
            raise TypeError(
                f"async_transport must be an httpx.AsyncBaseTransport, got {async_transport!r}"
            )
        self.url = url
        self.base_url = base
        self.model = model
        self.model_name = model or url
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.normalize = normalize
        self._conn = Connection(
            base,
            endpoint=endpoint,
            dialect=dialect if dialect != "auto" else implied,
            max_batch=max_batch,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=float(timeout),
            max_retries=max_retries,
            transport=transport,
            async_transport=async_transport,
        )

    # ------------------------------------------------------------ the server
    @property
    def dialect(self) -> str | None:
        """The dialect spoken (``None`` until ``"auto"`` has probed the server)."""
        return self._conn.dialect

    @property
    def max_batch(self) -> int | None:
        """Texts per request (``None`` until learned from the server)."""
        return self._conn.max_batch

    @staticmethod
    def _no_raw_scores() -> str:
        return (
            "normalize=False needs raw logits, and the cohere dialect only returns relevance "
            "scores in [0, 1]; use dialect='tei' or 'vllm' (bge-rerank serve speaks both), or "
            "normalize=True."
        )

    def close(self) -> None:
        """Close the sync client's connections (a later call opens new ones)."""
        self._conn.close()

    async def aclose(self) -> None:
        """Close this event loop's async client."""
        await self._conn.aclose()

    def __enter__(self) -> RemoteScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RemoteScorer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------ requests
    def _use_sigmoid(self, normalize: bool | None) -> bool:
        if normalize is not None:
            check_normalize(normalize)
        use = self.normalize if normalize is None else normalize
        if not use and self._conn.dialect == "cohere":
            raise ValueError(self._no_raw_scores())
        return use

    def _chunks(self, pairs: list[tuple[str, str]]) -> list[list[int]]:
        """Row numbers per request: at most ``max_batch`` each, one query each unless vLLM."""
        size = self._conn.max_batch or DEFAULT_MAX_BATCH
        mixed = self._conn.dialect == "vllm"
        runs: list[list[int]] = []
        for i, (query, _) in enumerate(pairs):
            if runs and len(runs[-1]) < size and (mixed or pairs[runs[-1][0]][0] == query):
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs

    def _body(self, pairs: list[tuple[str, str]], rows: list[int], use: bool) -> dict[str, Any]:
        return request_body(self._conn.dialect or "tei", self.model, [pairs[i] for i in rows], use)

    def _collect(self, rows: list[int], payload: Any, out: list[float]) -> None:
        url = self._conn.url
        scores = parse_scores(self._conn.dialect or "tei", payload, len(rows), url)
        bad = [s for s in scores if not math.isfinite(s)]
        if bad:
            raise RemoteRerankError(
                f"{url} returned a non-finite score ({bad[0]}); the server's model is broken "
                "(check it in-process with dtype='float32').",
                url=url,
            )
        for i, score in zip(rows, scores):
            out[i] = score

    def _score_items(self, pairs: list[tuple[str, str]], normalize: bool | None) -> list[float]:
        self._use_sigmoid(normalize)
        if not pairs:
            return []
        self._conn.resolve()
        use = self._use_sigmoid(normalize)
        out = [0.0] * len(pairs)
        last = 0.0
        for rows in self._chunks(pairs):
            check_deadline(last)  # inside rank(timeout=...): a request is the remote batch
            started = time.monotonic()
            self._collect(rows, self._conn.post(self._body(pairs, rows, use)), out)
            last = time.monotonic() - started
        return out

    async def _ascore_items(
        self, pairs: list[tuple[str, str]], normalize: bool | None
    ) -> list[float]:
        self._use_sigmoid(normalize)
        if not pairs:
            return []
        await self._conn.aresolve()
        use = self._use_sigmoid(normalize)
        out = [0.0] * len(pairs)
        gate = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def one(rows: list[int]) -> None:
            async with gate:
                payload = await self._conn.apost(self._body(pairs, rows, use))
            self._collect(rows, payload, out)

        tasks = [asyncio.ensure_future(one(rows)) for rows in self._chunks(pairs)]
        try:
            await asyncio.gather(*tasks)
        finally:  # one failed, or the deadline cancelled us: the others stop too, not run on
            for task in tasks:
                task.cancel()
        return out

    # ------------------------------------------------------------ the scorer's API
    def _pairs_of(self, query: str, passages: Iterable[Any]) -> list[tuple[str, str]]:
        check_query(query)
        return [(query, text) for text in passage_texts(passages, None)]

    def _many(
        self, queries: Sequence[str], candidates: Sequence[Sequence[Any]]
    ) -> tuple[list[tuple[str, str]], list[int]]:
        queries = as_passages(queries, "queries")
        candidates = as_passages(candidates, "candidates")
        if len(queries) != len(candidates):
            raise ValueError(
                f"queries and candidates must have the same length "
                f"({len(queries)} != {len(candidates)}): one candidate list per query."
            )
        items: list[tuple[str, str]] = []
        sizes: list[int] = []
        for qi, (query, passages) in enumerate(zip(queries, candidates)):
            check_query(query, f"queries[{qi}]")
            texts = passage_texts(passages, None, f"candidates[{qi}]")
            items.extend((query, t) for t in texts)
            sizes.append(len(texts))
        return items, sizes

    @staticmethod
    def _split(flat: list[float], sizes: list[int]) -> list[list[float]]:
        it = iter(flat)
        return [[next(it) for _ in range(size)] for size in sizes]

    def raw_scores(self, query: str, passages: Iterable[Any]) -> list[float]:
        """Raw logits of ``passages`` (for the Cohere dialect, the logits of its scores)."""
        self._conn.resolve()
        if self._conn.dialect == "cohere":
            return to_logits(self.score(query, passages, normalize=True))
        return self.score(query, passages, normalize=False)

    async def araw_scores(self, query: str, passages: Iterable[Any]) -> list[float]:
        """:meth:`raw_scores`, awaited."""
        await self._conn.aresolve()
        if self._conn.dialect == "cohere":
            return to_logits(await self.ascore(query, passages, normalize=True))
        return await self.ascore(query, passages, normalize=False)

    def score(
        self, query: str, passages: Iterable[Any], *, normalize: bool | None = None
    ) -> list[float]:
        """Scores of ``passages`` (strings or records) against ``query``, in input order."""
        return self._score_items(self._pairs_of(query, passages), normalize)

    def score_pairs(
        self, pairs: Iterable[Sequence[Any]], *, normalize: bool | None = None
    ) -> list[float]:
        """Scores of (query, passage) pairs, in input order."""
        return self._score_items(pair_texts(pairs, None), normalize)

    def score_many(
        self,
        queries: Sequence[str],
        candidates: Sequence[Sequence[Any]],
        *,
        normalize: bool | None = None,
    ) -> list[list[float]]:
        """Each query's scores against its own candidates (vLLM: many queries per request)."""
        items, sizes = self._many(queries, candidates)
        return self._split(self._score_items(items, normalize), sizes)

    def rank(
        self,
        query: str,
        passages: Iterable[Any],
        top_k: int | None = None,
        *,
        normalize: bool | None = None,
        first_stage_scores: Sequence[float] | None = None,
        fusion: FusionConfig | None = None,
        timeout: float | None = None,
    ) -> list[Ranked]:
        """Passages best first as ``Ranked(index, score, passage)``; ties keep input order.

        As :meth:`CrossEncoderScorer.rank`: ``fusion`` fuses with ``first_stage_scores``, and
        ``timeout`` (seconds: checked before each request, each request's timeout cut to the time
        left, no retry that would end late, a 503 ``deadline_exceeded`` not retried) falls back
        to the first-stage order with ``reranked=False`` and a warning, instead of running late.
        """
        if normalize is not None:
            check_normalize(normalize)
        return rank_remote(
            self, query, passages, top_k, normalize=normalize,
            first_stage_scores=first_stage_scores, fusion=fusion, timeout=timeout,
        )  # fmt: skip

    async def ascore(
        self, query: str, passages: Iterable[Any], *, normalize: bool | None = None
    ) -> list[float]:
        """:meth:`score`, awaited."""
        return await self._ascore_items(self._pairs_of(query, passages), normalize)

    async def ascore_pairs(
        self, pairs: Iterable[Sequence[Any]], *, normalize: bool | None = None
    ) -> list[float]:
        """:meth:`score_pairs`, awaited."""
        return await self._ascore_items(pair_texts(pairs, None), normalize)

    async def ascore_many(
        self,
        queries: Sequence[str],
        candidates: Sequence[Sequence[Any]],
        *,
        normalize: bool | None = None,
    ) -> list[list[float]]:
        """:meth:`score_many`, awaited (the requests go out concurrently)."""
        items, sizes = self._many(queries, candidates)
        return self._split(await self._ascore_items(items, normalize), sizes)

    async def arank(
        self,
        query: str,
        passages: Iterable[Any],
        top_k: int | None = None,
        *,
        normalize: bool | None = None,
        first_stage_scores: Sequence[float] | None = None,
        fusion: FusionConfig | None = None,
        timeout: float | None = None,
    ) -> list[Ranked]:
        """:meth:`rank`, awaited; at the ``timeout`` the requests in flight are cancelled (and a
        server's 503 ``deadline_exceeded`` cancels the rest): the first-stage order, as there."""
        if normalize is not None:
            check_normalize(normalize)
        return await arank_remote(
            self, query, as_passages(passages), top_k, normalize=normalize,
            first_stage_scores=first_stage_scores, fusion=fusion, timeout=timeout,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"RemoteScorer({self.url!r}, dialect={self._conn.dialect or 'auto'!r})"
