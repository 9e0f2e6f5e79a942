"""Turning per-query rankings into an :class:`~.report.EvaluationResult` (the metric means)."""

from __future__ import annotations

from collections.abc import Sequence

from ..fields import best_first
from .candidates import EvalQuery
from .metrics import metric_order, query_metrics
from .report import EvaluationResult, QueryResult

__all__ = ["Ranking", "aggregate", "rank_by_scores"]

#: One query's ranked ids (best first) and their scores (``None``: the first-stage order).
Ranking = tuple[tuple[str, ...], tuple[float, ...] | None]


def rank_by_scores(query: EvalQuery, scores: Sequence[float]) -> Ranking:
    """``query``'s candidates best first by ``scores`` (ties keep the first-stage order)."""
    order = best_first(scores)
    return tuple(query.doc_ids[i] for i in order), tuple(float(scores[i]) for i in order)


def aggregate(
    name: str,
    queries: Sequence[EvalQuery],
    rankings: Sequence[Ranking],
    ks: Sequence[int],
    threshold: float,
    skipped: int,
    pairs: int,
    seconds: float,
) -> EvaluationResult:
    """The result of one system: each query's metrics and their means."""
    per_query = []
    totals = dict.fromkeys(metric_order(ks), 0.0)
    for query, (ranking, scores) in zip(queries, rankings):
        metrics = query_metrics(ranking, query.grades, ks, threshold)
        for key, value in metrics.items():
            totals[key] += value
        per_query.append(QueryResult(query.qid, ranking, scores, metrics))
    n = len(queries)
    means = {key: (value / n if n else 0.0) for key, value in totals.items()}
    return EvaluationResult(name, means, per_query, n, skipped, pairs, seconds)
