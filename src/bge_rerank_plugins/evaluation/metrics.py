"""The ranking metrics: Hit@K, MRR@K, nDCG@K and Recall@K of one ranked list of document ids.

Plain Python over ``ranking`` (ids, best first) and ``grades`` (``{doc_id: qrels grade}``;
documents absent from it have grade 0). The conventions are in
:mod:`bge_rerank_plugins.evaluation` and ``docs/evaluation.md``.

>>> round(ndcg_at_k(["d2", "d1"], {"d1": 2, "d2": 1}, k=2), 4)
0.8597
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_KS",
    "METRICS",
    "METRIC_LABELS",
    "Grades",
    "check_k",
    "hit_at_k",
    "metric_order",
    "mrr_at_k",
    "ndcg_at_k",
    "query_metrics",
    "recall_at_k",
]

#: The cut-offs reported by default.
DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10)
#: Metric families, in table order.
METRICS: tuple[str, ...] = ("hit", "mrr", "ndcg", "recall")
#: How each family is written in tables and charts.
METRIC_LABELS: Mapping[str, str] = {"hit": "Hit", "mrr": "MRR", "ndcg": "nDCG", "recall": "Recall"}

#: A query's qrels: document id -> grade.
Grades = Mapping[str, float]


def check_k(k: int) -> None:
    """Raise ``ValueError`` unless ``k`` is a positive int (a bool is not a cut-off).

    >>> check_k(0)
    Traceback (most recent call last):
    ...
    ValueError: k must be a positive int, got 0
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")


def hit_at_k(ranking: Sequence[str], grades: Grades, k: int, threshold: float = 1) -> float:
    """1.0 if a document with grade >= ``threshold`` is among the first ``k``, else 0.0.

    >>> hit_at_k(["a", "b"], {"b": 1}, k=1), hit_at_k(["a", "b"], {"b": 1}, k=2)
    (0.0, 1.0)
    """
    check_k(k)
    return float(any(grades.get(d, 0) >= threshold for d in ranking[:k]))


def mrr_at_k(ranking: Sequence[str], grades: Grades, k: int, threshold: float = 1) -> float:
    """Reciprocal rank of the first relevant document within the first ``k`` (0.0 if none).

    >>> mrr_at_k(["a", "b", "c"], {"c": 1}, k=3)
    0.3333333333333333
    """
    check_k(k)
    for rank, doc_id in enumerate(ranking[:k], start=1):
        if grades.get(doc_id, 0) >= threshold:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranking: Sequence[str], grades: Grades, k: int, threshold: float = 1) -> float:
    """Share of the query's relevant documents (all of them, per the qrels) in the first ``k``.

    Returns 0.0 when the query has no relevant document (such queries are skipped by
    :func:`~bge_rerank_plugins.evaluation.evaluate_reranker`).

    >>> recall_at_k(["a", "b"], {"a": 1, "z": 1}, k=2)
    0.5
    """
    check_k(k)
    relevant = {d for d, g in grades.items() if g >= threshold}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def ndcg_at_k(ranking: Sequence[str], grades: Grades, k: int) -> float:
    """nDCG@k with gain = grade and discount 1 / log2(rank + 1) (``trec_eval`` ``ndcg_cut``).

    The ideal DCG sorts all the query's judged grades, including documents absent from
    ``ranking``. Negative grades count as 0. Returns 0.0 when no grade is positive.

    >>> round(ndcg_at_k(["a", "b"], {"b": 1}, k=2), 4)  # 1/log2(3) over 1/log2(2)
    0.6309
    """
    check_k(k)
    dcg = sum(
        max(grades.get(d, 0), 0) / math.log2(rank + 1)
        for rank, d in enumerate(ranking[:k], start=1)
    )
    ideal = sorted((max(g, 0) for g in grades.values()), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def query_metrics(
    ranking: Sequence[str],
    grades: Grades,
    ks: Sequence[int] = DEFAULT_KS,
    threshold: float = 1,
) -> dict[str, float]:
    """All metrics of one ranked list: ``{"hit@1": .., "mrr@1": .., ..., "recall@10": ..}``.

    >>> query_metrics(["a", "b"], {"b": 1}, ks=[1])
    {'hit@1': 0.0, 'mrr@1': 0.0, 'ndcg@1': 0.0, 'recall@1': 0.0}
    """
    out: dict[str, float] = {}
    for k in ks:
        out[f"hit@{k}"] = hit_at_k(ranking, grades, k, threshold)
        out[f"mrr@{k}"] = mrr_at_k(ranking, grades, k, threshold)
        out[f"ndcg@{k}"] = ndcg_at_k(ranking, grades, k)
        out[f"recall@{k}"] = recall_at_k(ranking, grades, k, threshold)
    return out


def metric_order(ks: Sequence[int]) -> list[str]:
    """The metric keys in table order: each family, then each cut-off.

    >>> metric_order([1, 3])
    ['hit@1', 'hit@3', 'mrr@1', 'mrr@3', 'ndcg@1', 'ndcg@3', 'recall@1', 'recall@3']
    """
    return [f"{m}@{k}" for m in METRICS for k in ks]
