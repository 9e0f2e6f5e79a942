"""``RemoteScorer.rank`` / ``arank``: the in-process scorer's ranking (fusion with first-stage
scores, a deadline that falls back to the first-stage order) over remote scores.

The ranking itself is :func:`bge_rerank_plugins.ranking.rank_passages`, the body of
:meth:`CrossEncoderScorer.rank`, run on a view that hands it the server's raw scores. The
deadline fails open: the sync path checks it before each request (a request is the remote
"batch"), the async path cancels the requests in flight when it passes, and both send each
request inside :func:`~.http.request_deadline` (its timeout cut to the time left, no retry that
would end late, a server's 503 ``deadline_exceeded`` not retried). Whichever stops it, the result
is the first-stage order with ``reranked=False`` and a logged warning, as in-process.

The Cohere dialect returns relevance scores only; ranking needs raw scores, so those are mapped
back through the logit (the order is unchanged and the shown scores are the server's again).

>>> to_logits([0.5])
[0.0]
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from ..ranking import Ranked, check_timeout, rank_passages
from ..runtime.deadline import DeadlineExceeded
from .http import request_deadline

__all__ = ["KnownScores", "arank_remote", "rank_remote", "to_logits"]

_EDGE = 1e-12


def to_logits(scores: Sequence[float]) -> list[float]:
    """``log(p / (1 - p))`` of each score in [0, 1], clamped away from 0 and 1."""
    out = []
    for p in scores:
        p = min(1.0 - _EDGE, max(_EDGE, float(p)))
        out.append(math.log(p / (1.0 - p)))
    return out


class KnownScores:
    """What ``rank_passages`` needs of a scorer, with the raw scores fetched already (or
    ``None``: the deadline passed first, so ``score`` raises as the batch loop would)."""

    calibration = None

    def __init__(self, raw: list[float] | None, normalize: bool, model_name: str) -> None:
        self.raw = raw
        self.normalize = normalize
        self.model_name = model_name

    def score(self, query: str, passages: Any, normalize: bool | None = None) -> list[float]:
        if self.raw is None:
            raise DeadlineExceeded("the remote requests did not finish before the deadline")
        return self.raw


class _LiveScores(KnownScores):
    """Fetches the raw scores when asked (inside ``rank_passages``' deadline scope)."""

    def __init__(self, remote: Any) -> None:
        super().__init__(None, remote.normalize, remote.model_name)
        self.remote = remote

    def score(self, query: str, passages: Any, normalize: bool | None = None) -> list[float]:
        return self.remote.raw_scores(query, passages)


def rank_remote(
    remote: Any,
    query: str,
    passages: Any,
    top_k: int | None,
    *,
    normalize: bool | None,
    first_stage_scores: Sequence[float] | None,
    fusion: Any,
    timeout: float | None,
) -> list[Ranked]:
    """The sync ranking of ``passages`` by ``remote``'s scores."""
    with request_deadline(check_timeout(timeout)):
        return rank_passages(
            _LiveScores(remote), query, passages, top_k, normalize=normalize,
            first_stage_scores=first_stage_scores, fusion=fusion, timeout=timeout,
        )  # fmt: skip


async def arank_remote(
    remote: Any,
    query: str,
    passages: Sequence[Any],
    top_k: int | None,
    *,
    normalize: bool | None,
    first_stage_scores: Sequence[float] | None,
    fusion: Any,
    timeout: float | None,
) -> list[Ranked]:
    """:func:`rank_remote`, awaited; the deadline cancels the requests still in flight."""
    timeout = check_timeout(timeout)
    if timeout is None:
        raw: list[float] | None = await remote.araw_scores(query, passages)
    else:
        try:
            with request_deadline(timeout):  # the tasks wait_for and gather start inherit it
                raw = await asyncio.wait_for(remote.araw_scores(query, passages), timeout)
        except (asyncio.TimeoutError, DeadlineExceeded):
            raw = None  # rank_passages falls back (and warns, and counts it) as in-process
    view = KnownScores(raw, remote.normalize, remote.model_name)
    return rank_passages(
        view, query, passages, top_k, normalize=normalize,
        first_stage_scores=first_stage_scores, fusion=fusion, timeout=timeout,
    )  # fmt: skip
