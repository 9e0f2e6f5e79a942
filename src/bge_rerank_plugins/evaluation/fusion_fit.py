"""Learning the fusion weight from labels, with K-fold cross-validation over queries.

Every candidate setting (each method of ``method``, each weight of :data:`WEIGHT_GRID`) is
scored once per query (nDCG@k of its fused order). For each fold, the setting with the best
mean over the *other* folds is applied to the fold's queries: the figure reported
(:attr:`FusionFit.heldout`) is the mean over all queries of those held-out values, never the
figure of the setting on the queries it was chosen on (:attr:`FusionFit.fitted`, shown for
contrast). The setting stored for use (:attr:`FusionFit.config`) is chosen on all queries.

>>> samples = [
...     FusionSample("q1", ("a", "b"), (0.0, 3.0), None, {"b": 1}),
...     FusionSample("q2", ("c", "d"), (2.0, 0.0), None, {"c": 1}),
... ]
>>> fit = cross_validate_fusion(samples, method="blend", folds=2)
>>> round(fit.heldout, 3), fit.fitted, fit.config.describe()  # held-out < in-sample
(0.815, 1.0, 'blend w=0.80')
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..fields import best_first
from ..fusion import FUSION_METHODS, FusionConfig, fused_order
from .metrics import ndcg_at_k

__all__ = ["WEIGHT_GRID", "FusionFit", "FusionSample", "cross_validate_fusion", "fold_ids"]

#: The weights tried: 0, 0.05, ..., 1.
WEIGHT_GRID: tuple[float, ...] = tuple(i / 20 for i in range(21))


@dataclass(frozen=True)
class FusionSample:
    """One labelled query: candidates in first-stage order, the reranker's raw scores."""

    qid: str
    doc_ids: tuple[str, ...]
    reranker_scores: tuple[float, ...]
    first_stage_scores: tuple[float, ...] | None
    grades: Mapping[str, float]


@dataclass(frozen=True)
class FusionFit:
    """The fitted fusion and its held-out figure.

    Attributes:
        config: the setting chosen on all queries (what is stored and used).
        metric: e.g. ``"ndcg@10"``.
        heldout: mean metric of the fused runs, each query fused with the setting chosen on
            the other folds.
        fitted: mean metric of ``config`` on all queries (in-sample: optimistic).
        first_stage, reranker: mean metric of the first-stage order and the reranker alone.
        folds: folds used; ``fold_configs``: the setting chosen for each fold.
        heldout_orders: per sample, its doc ids in held-out fused order.
        heldout_values: per sample, its held-out metric.
    """

    config: FusionConfig
    metric: str
    heldout: float
    fitted: float
    first_stage: float
    reranker: float
    folds: int
    fold_configs: tuple[FusionConfig, ...]
    heldout_orders: tuple[tuple[str, ...], ...]
    heldout_values: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """The figures (JSON-ready, without the per-query orders)."""
        return {
            "fusion": self.config.to_dict(),
            "metric": self.metric,
            "heldout": round(self.heldout, 4),
            "fitted": round(self.fitted, 4),
            "first_stage": round(self.first_stage, 4),
            "reranker": round(self.reranker, 4),
            "folds": self.folds,
            "queries": len(self.heldout_values),
            "fold_settings": [c.describe() for c in self.fold_configs],
        }

    def summary(self) -> str:
        """Three lines: the held-out figure next to the first stage and the reranker alone."""
        m = self.metric
        return (
            f"fusion {self.config.describe()}: held-out {m} {self.heldout:.4f} ({self.folds}-fold "
            f"CV over {len(self.heldout_values)} queries; {self.fitted:.4f} in-sample)\n"
            f"  first stage {m} {self.first_stage:.4f}, reranker alone {self.reranker:.4f}"
        )


def fold_ids(n: int, folds: int, seed: int = 0) -> list[int]:
    """The fold of each of ``n`` items: a seeded shuffle dealt round-robin.

    >>> sorted(fold_ids(5, 2))
    [0, 0, 0, 1, 1]
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = [0] * n
    for position, i in enumerate(order):
        out[i] = position % folds
    return out


def _settings(method: str, grid: Sequence[float], rrf_k: float, normalization: str) -> list:
    methods = FUSION_METHODS if method == "auto" else (method,)
    if method != "auto" and method not in FUSION_METHODS:
        raise ValueError(f"method must be 'auto' or one of {FUSION_METHODS}, got {method!r}")
    return [
        FusionConfig(method=m, weight=w, rrf_k=rrf_k, normalization=normalization)
        for m in methods
        for w in grid
    ]


def _choose(settings: list[FusionConfig], table: list[list[float]], rows: list[int]) -> int:
    """The setting with the best mean over ``rows``. Ties: the blend if it is among them (the
    default method), then the middle of its tied weights (a plateau's centre, not its edge)."""
    means = [sum(values[r] for r in rows) / max(len(rows), 1) for values in table]
    best = max(means)
    tied = [i for i, m in enumerate(means) if m >= best - 1e-12]
    for method in ("blend", "rrf"):
        same = [i for i in tied if settings[i].method == method]
        if same:
            return same[len(same) // 2]
    return tied[len(tied) // 2]


def cross_validate_fusion(
    samples: Sequence[FusionSample],
    *,
    method: str = "auto",
    folds: int = 5,
    k: int = 10,
    seed: int = 0,
    grid: Sequence[float] = WEIGHT_GRID,
    rrf_k: float = 60.0,
    normalization: str = "minmax",
) -> FusionFit:
    """Fit the fusion weight (and, with ``method="auto"``, the method) maximising nDCG@``k``.

    Args:
        samples: the labelled queries.
        method: ``"blend"``, ``"rrf"`` or ``"auto"`` (both; the better one on the training
            folds).
        folds: K of the K-fold cross-validation (at most the number of queries).
        k: the nDCG cut-off.
        seed: fixes the fold assignment.
        grid: the weights tried.
    """
    if len(samples) < 2:
        raise ValueError(
            f"fusion needs at least 2 labelled queries to cross-validate, got {len(samples)}"
        )
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    folds = min(folds, len(samples))
    settings = _settings(method, grid, rrf_k, normalization)
    orders: list[list[list[int]]] = []
    table: list[list[float]] = []
    for setting in settings:
        per_query = [fused_order(s.reranker_scores, s.first_stage_scores, setting) for s in samples]
        orders.append(per_query)
        table.append(
            [
                ndcg_at_k([s.doc_ids[i] for i in order], s.grades, k)
                for s, order in zip(samples, per_query)
            ]
        )
    assignment = fold_ids(len(samples), folds, seed)
    heldout_values = [0.0] * len(samples)
    heldout_orders: list[tuple[str, ...]] = [()] * len(samples)
    chosen: list[FusionConfig] = []
    for fold in range(folds):
        train = [i for i, f in enumerate(assignment) if f != fold]
        best = _choose(settings, table, train)
        chosen.append(settings[best])
        for i, f in enumerate(assignment):
            if f == fold:
                heldout_values[i] = table[best][i]
                heldout_orders[i] = tuple(samples[i].doc_ids[j] for j in orders[best][i])
    everything = list(range(len(samples)))
    final = _choose(settings, table, everything)
    n = len(samples)
    first = [ndcg_at_k(s.doc_ids, s.grades, k) for s in samples]
    alone = [
        ndcg_at_k([s.doc_ids[i] for i in best_first(s.reranker_scores)], s.grades, k)
        for s in samples
    ]
    return FusionFit(
        config=settings[final],
        metric=f"ndcg@{k}",
        heldout=sum(heldout_values) / n,
        fitted=sum(table[final]) / n,
        first_stage=sum(first) / n,
        reranker=sum(alone) / n,
        folds=folds,
        fold_configs=tuple(chosen),
        heldout_orders=tuple(heldout_orders),
        heldout_values=tuple(heldout_values),
    )
