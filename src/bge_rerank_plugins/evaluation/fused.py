"""A reranker's run and its fused run from one scoring pass, and the verdict on them.

Used by :func:`~bge_rerank_plugins.evaluation.evaluate_models` with ``fusion=``: the raw logits
are scored once; the reranker's run ranks them as before, the fused run fuses them with the
first stage, either with a given :class:`~bge_rerank_plugins.fusion.FusionConfig` or with the
setting fitted by K-fold cross-validation over queries (each query's fused ranking then comes
from a setting chosen on the *other* folds: a held-out figure).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from ..beir import BeirDataset
from ..calibration import convert_scores
from ..fusion import FusionConfig, fuse, fused_order
from .aggregate import aggregate, rank_by_scores
from .candidates import EvalQuery, resolve_template
from .fusion_fit import FusionFit, FusionSample, cross_validate_fusion
from .report import EvaluationResult
from .scoring import score_all, takes_keyword
from .significance import Verdict, verdict

__all__ = ["reranked_and_fused", "verdict_metric", "verdicts_for"]

logger = logging.getLogger(__name__)


def verdict_metric(ks: Sequence[int]) -> str:
    """The metric of the verdict: nDCG@10, else nDCG at the largest cut-off.

    >>> verdict_metric((1, 3, 10)), verdict_metric((1, 5))
    ('ndcg@10', 'ndcg@5')
    """
    return f"ndcg@{10 if 10 in ks else max(ks)}"


def reranked_and_fused(
    scorer: Any,
    label: str,
    data: BeirDataset,
    queries: Sequence[EvalQuery],
    fusion: FusionConfig | str,
    *,
    ks: Sequence[int],
    relevance_threshold: float,
    template: Any,
    show_progress_bar: bool | None,
    folds: int = 5,
    seed: int = 0,
) -> tuple[EvaluationResult, EvaluationResult | None, FusionFit | None]:
    """The reranker's result, its fused result (``None`` if too few queries) and the CV fit."""
    tpl = resolve_template(template, scorer)
    start = time.perf_counter()
    raw = score_all(scorer, queries, data, tpl, show_progress_bar, raw=True)
    seconds = time.perf_counter() - start
    shown = raw
    if takes_keyword(scorer.score_many, "normalize") and hasattr(scorer, "normalize"):
        calibration = getattr(scorer, "calibration", None)
        shown = [convert_scores(r, scorer.normalize, calibration, label) for r in raw]
    pairs = sum(len(q.doc_ids) for q in queries)
    rankings = [rank_by_scores(q, s) for q, s in zip(queries, shown)]
    result = aggregate(label, queries, rankings, ks, relevance_threshold, 0, pairs, seconds)
    samples = [
        FusionSample(q.qid, q.doc_ids, tuple(r), q.first_stage_scores, q.grades)
        for q, r in zip(queries, raw)
    ]
    fit = None
    if isinstance(fusion, FusionConfig):
        fused_rankings = []
        for s in samples:
            fused = fuse(s.reranker_scores, s.first_stage_scores, fusion)
            order = fused_order(s.reranker_scores, s.first_stage_scores, fusion)
            fused_rankings.append(
                (tuple(s.doc_ids[i] for i in order), tuple(fused[i] for i in order))
            )
        name = f"{label} + fusion ({fusion.describe()})"
    else:
        if len(samples) < 2:
            logger.warning("%s: fewer than 2 queries, no fused run is fitted", label)
            return result, None, None
        k = int(verdict_metric(ks).split("@")[1])
        fit = cross_validate_fusion(samples, method=fusion, folds=folds, k=k, seed=seed)
        fused_rankings = [(order, None) for order in fit.heldout_orders]
        name = f"{label} + fusion (CV)"
    fused_result = aggregate(name, queries, fused_rankings, ks, relevance_threshold, 0, 0, 0.0)
    fused_result.kind = "fused"
    return result, fused_result, fit


def verdicts_for(
    first: EvaluationResult,
    results: Sequence[tuple[EvaluationResult, EvaluationResult | None, str | None]],
    ks: Sequence[int],
    seed: int = 0,
) -> list[Verdict]:
    """One verdict per (reranker, fused or None, fusion label) against ``first``."""
    metric = verdict_metric(ks)

    def values(result: EvaluationResult) -> list[float]:
        return [q.metrics[metric] for q in result.per_query]

    out = []
    for result, fused, fusion_label in results:
        out.append(
            verdict(
                result.name,
                values(result),
                first.name,
                values(first),
                metric=metric,
                fused=None if fused is None else fused.name,
                fused_values=None if fused is None else values(fused),
                fusion_label=fusion_label,
                seed=seed,
            )
        )
    return out
