"""What :meth:`CrossEncoderScorer.rank` returns, and how it fuses and keeps a deadline.

:class:`Ranked` is still the 3-tuple ``(index, score, passage)`` it always was (unpacking,
indexing and comparison are unchanged); it also says which score is which:
``reranker_score`` (the reranker's score, in the scorer's ``normalize`` mode),
``first_stage_score`` (the one passed in, if any), ``fused_score`` (with ``fusion=``) and
``reranked`` (``False`` when the deadline fell back to the first-stage order).

The deadline fails open: with ``timeout=`` seconds, scoring stops at the next batch boundary
once the next batch would end after the deadline, and ``rank`` returns the **first-stage order**
(``first_stage_scores`` best first, else the input order) with ``reranked=False`` on every item
and a logged warning; it never raises for it and never waits longer than one batch past the
deadline. Scores of the batches done before the deadline are dropped (``reranker_score=None``):
a list that is half reranked would mix two orders. ``score`` is then the first-stage score when
given, else ``1 / (1 + position)``, so it still follows the returned order.
:func:`deadline_fallbacks` counts the fallbacks of this process (the server's ``/metrics``).

>>> r = Ranked(2, 0.9, "c", reranker_score=1.2, first_stage_score=7.0, fused_score=0.9)
>>> index, score, passage = r
>>> (index, score, passage, r.reranker_score, r.reranked)
(2, 0.9, 'c', 1.2, True)
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

from .calibration import convert_scores
from .config import check_normalize
from .fields import as_passages, best_first
from .fusion import FusionConfig, fuse, fused_order
from .runtime.deadline import DeadlineExceeded, deadline_scope

__all__ = ["Ranked", "check_timeout", "deadline_fallbacks", "rank_passages"]

logger = logging.getLogger(__name__)

_fallbacks = 0
_fallback_lock = threading.Lock()


class _RankedFields(NamedTuple):
    index: int
    score: float
    passage: Any


class Ranked(_RankedFields):
    """One ranked passage: ``(index, score, passage)``, plus which score is which.

    ``score`` is what the list is sorted by: the fused score with ``fusion=``, else the
    reranker's score. The extra attributes are keyword-only and not part of the tuple, so
    ``index, score, passage = ranked`` keeps working (and ``==`` compares the tuple only).

    Attributes:
        reranker_score: the reranker's score (``normalize`` mode), ``None`` if not reranked.
        first_stage_score: the first-stage score passed to ``rank``, else ``None``.
        fused_score: the fused score (``fusion=`` given), else ``None``.
        reranked: ``False`` when the deadline passed and this is the first-stage order.
    """

    # Class-level defaults: what an instance made by ``_replace`` / ``_make`` reads.
    reranker_score: float | None = None
    first_stage_score: float | None = None
    fused_score: float | None = None
    reranked: bool = True

    def __new__(
        cls,
        index: int,
        score: float,
        passage: Any,
        *,
        reranker_score: float | None = None,
        first_stage_score: float | None = None,
        fused_score: float | None = None,
        reranked: bool = True,
    ) -> Ranked:
        self = super().__new__(cls, index, score, passage)
        extra = {
            "reranker_score": score if reranker_score is None and reranked else reranker_score,
            "first_stage_score": first_stage_score,
            "fused_score": fused_score,
            "reranked": reranked,
        }
        self.__dict__.update(extra)
        return self

    def __getnewargs_ex__(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return tuple(self), dict(self.__dict__)

    def __repr__(self) -> str:
        extra = [
            f"{k}={v!r}"
            for k, v in self.__dict__.items()
            if v is not None and v is not True and not (k == "reranker_score" and v == self.score)
        ]
        base = super().__repr__()
        return base if not extra else base[:-1] + ", " + ", ".join(extra) + ")"


def check_timeout(timeout: Any) -> float | None:
    """``timeout`` (seconds) if it is ``None`` or a finite number > 0; else Type/ValueError."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


def deadline_fallbacks() -> int:
    """How many ``rank(..., timeout=...)`` calls of this process fell back to the first stage."""
    return _fallbacks


def _fell_back(passages: list[Any], first: list[float] | None, timeout: float) -> list[Ranked]:
    global _fallbacks
    with _fallback_lock:
        _fallbacks += 1
    logger.warning(
        "Reranking %d passages did not finish within timeout=%.3g s; returning the first-stage "
        "order, marked reranked=False.",
        len(passages),
        timeout,
    )
    order = best_first(first) if first is not None else list(range(len(passages)))
    return [
        Ranked(
            i,
            first[i] if first is not None else 1.0 / (1 + position),
            passages[i],
            first_stage_score=None if first is None else first[i],
            reranked=False,
        )
        for position, i in enumerate(order)
    ]


def rank_passages(
    scorer: Any,
    query: str,
    passages: Any,
    top_k: int | None = None,
    *,
    normalize: bool | str | None = None,
    first_stage_scores: Sequence[float] | None = None,
    fusion: FusionConfig | None = None,
    timeout: float | None = None,
) -> list[Ranked]:
    """The body of :meth:`CrossEncoderScorer.rank` (see there and this module's docstring)."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative int or None, got {top_k!r}")
    if fusion is not None and not isinstance(fusion, FusionConfig):
        raise TypeError(
            f"fusion must be a FusionConfig or None, got {type(fusion).__name__}; build one "
            "with bge_rerank_plugins.fusion.FusionConfig(method='blend', weight=0.5)"
        )
    timeout = check_timeout(timeout)
    passages = as_passages(passages)
    first = None
    if first_stage_scores is not None:
        first = [float(s) for s in as_passages(first_stage_scores, "first_stage_scores")]
        if len(first) != len(passages) or not all(math.isfinite(s) for s in first):
            raise ValueError(
                f"first_stage_scores must hold one finite number per passage ({len(passages)}), "
                f"got {len(first)} values"
            )
    if normalize is not None:
        check_normalize(normalize)
    mode = scorer.normalize if normalize is None else normalize
    try:
        with deadline_scope(timeout):
            raw = scorer.score(query, passages, normalize=False)
    except DeadlineExceeded:
        assert timeout is not None
        ranked = _fell_back(passages, first, timeout)
        return ranked if top_k is None else ranked[:top_k]
    shown = convert_scores(raw, mode, getattr(scorer, "calibration", None), scorer.model_name)
    if fusion is None:
        order = best_first(raw)  # the raw order: a flat stretch of a calibration ties nothing
        fused = None
    else:
        order = fused_order(raw, first, fusion)
        fused = fuse(raw, first, fusion)
    if top_k is not None:
        order = order[:top_k]
    return [
        Ranked(
            i,
            shown[i] if fused is None else fused[i],
            passages[i],
            reranker_score=shown[i],
            first_stage_score=None if first is None else first[i],
            fused_score=None if fused is None else fused[i],
        )
        for i in order
    ]
