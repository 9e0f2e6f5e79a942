"""Running rerankers over prepared queries: :func:`evaluate_reranker` and :func:`evaluate_models`.

All (query, candidate) pairs of a split go to the scorer in ONE ``score_many`` call; each
query's candidates are then sorted best first (equal scores keep the first-stage order) and
compared to the qrels. A progress-bar choice is passed to that call as an argument
(``score_many(..., show_progress_bar=...)``, when the scorer's method takes it), never set on
the scorer, so a scorer shared with other threads (a server, say) is not changed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..beir import BeirDataset, load_beir
from ..fusion import FusionConfig
from .aggregate import Ranking, aggregate, rank_by_scores
from .candidates import EvalQuery, prepare_queries, resolve_source, resolve_template
from .fused import reranked_and_fused, verdicts_for
from .metrics import DEFAULT_KS, check_k
from .report import Comparison, EvaluationResult
from .scoring import score_all, takes_keyword

__all__ = [
    "as_dataset",
    "as_scorer",
    "evaluate_models",
    "evaluate_reranker",
    "score_all",
    "system_name",
    "takes_keyword",
]

logger = logging.getLogger(__name__)


def as_scorer(scorer: Any) -> Any:
    """``scorer`` as something with ``score_many``: a model id or folder becomes a scorer.

    Raises:
        TypeError: ``scorer`` is not a scorer, a path, ``None`` or an object with ``score_many``.
    """
    if scorer is None or hasattr(scorer, "score_many"):
        return scorer
    if isinstance(scorer, (str, os.PathLike)):
        from ..scorer import CrossEncoderScorer

        return CrossEncoderScorer(scorer)
    raise TypeError(
        f"scorer must be a CrossEncoderScorer, a model id or directory, None, or an object with "
        f"score_many(queries, candidates); got {type(scorer).__name__}"
    )


def system_name(scorer: Any) -> str:
    """A table label for ``scorer``: its model folder's name, else its class name."""
    name = getattr(scorer, "model_name", None) or type(scorer).__name__
    return Path(str(name)).name or str(name)


def as_dataset(dataset: BeirDataset | str | os.PathLike[str], split: str) -> BeirDataset:
    """A loaded split: ``dataset`` itself, or the folder ``dataset`` loaded for ``split``."""
    if isinstance(dataset, BeirDataset):
        if split != dataset.split:
            logger.debug("using the loaded split %r (split=%r ignored)", dataset.split, split)
        return dataset
    return load_beir(dataset, split)


def evaluate_reranker(
    scorer: Any,
    dataset: BeirDataset | str | os.PathLike[str],
    split: str = "dev",
    *,
    top_k: int | None = 30,
    max_queries: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    candidates: str = "auto",
    template: Any = None,
    relevance_threshold: float = 1,
    name: str | None = None,
    show_progress_bar: bool | None = None,
    queries: Sequence[EvalQuery] | None = None,
) -> EvaluationResult:
    """Rerank each query's first-stage candidates with ``scorer`` and compute the metrics.

    Args:
        scorer: a ``CrossEncoderScorer``, a model id or directory, ``None`` for the first-stage
            order, or any object with ``score_many(queries, candidates)``.
        dataset: a :class:`~bge_rerank_plugins.beir.BeirDataset` or a BEIR-style folder
            (loaded for ``split``).
        split: the qrels split, when ``dataset`` is a folder.
        top_k: first-stage candidates reranked per query (``None``: all of them).
        max_queries: evaluate only the first this many queries (with a relevant document).
        ks: the cut-offs K of the metrics.
        candidates: ``"auto"``, ``"given"`` or ``"bm25"`` (see
            :func:`~bge_rerank_plugins.evaluation.candidates.prepare_queries`).
        template: how documents become passage text: a format string, field names or a
            ``PassageTemplate``; default the scorer's template, else ``title`` + ``text``.
        relevance_threshold: the lowest qrels grade that counts as relevant for Hit, MRR and
            Recall (nDCG always uses the grades as gains).
        name: the label in tables (default: the model folder's name).
        show_progress_bar: passed to this one ``score_many`` call, when the scorer's method
            takes it (``None``: the scorer's own setting, by default a bar for runs of more
            than 2,000 pairs). The scorer itself is not changed.
        queries: prepared queries (from
            :func:`~bge_rerank_plugins.evaluation.candidates.prepare_queries`) to reuse across
            scorers.

    Returns:
        An :class:`~bge_rerank_plugins.evaluation.report.EvaluationResult`;
        ``result.metrics["ndcg@10"]`` etc.

    Example:
        >>> result = evaluate_reranker("BAAI/bge-reranker-v2-m3", "data/scifact", "dev",
        ...                            top_k=30)  # doctest: +SKIP
        >>> round(result.metrics["ndcg@10"], 3)  # doctest: +SKIP
        0.712
    """
    for k in ks:
        check_k(k)
    data = as_dataset(dataset, split)
    skipped = 0
    first_stage = "first stage"
    if queries is None:
        queries, first_stage, skipped = prepare_queries(
            data,
            top_k=top_k,
            max_queries=max_queries,
            candidates=candidates,
            relevance_threshold=relevance_threshold,
            template=template,
        )
    model = as_scorer(scorer)
    start = time.perf_counter()
    if model is None:
        rankings: list[Ranking] = [(q.doc_ids, None) for q in queries]
        label = name or first_stage
        pairs = 0
    else:
        tpl = resolve_template(template, model)
        scores = score_all(model, queries, data, tpl, show_progress_bar)
        rankings = [rank_by_scores(q, s) for q, s in zip(queries, scores)]
        label = name or system_name(model)
        pairs = sum(len(q.doc_ids) for q in queries)
    seconds = time.perf_counter() - start
    result = aggregate(label, queries, rankings, ks, relevance_threshold, skipped, pairs, seconds)
    logger.info(
        "%s: %d queries, %d pairs, %.1f s, ndcg@%d=%.4f",
        label,
        result.num_queries,
        pairs,
        seconds,
        max(ks),
        result.metrics.get(f"ndcg@{max(ks)}", float("nan")),
    )
    return result


def evaluate_models(
    models: Mapping[str, Any] | Sequence[Any],
    dataset: BeirDataset | str | os.PathLike[str],
    split: str = "dev",
    *,
    top_k: int | None = 30,
    max_queries: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    candidates: str = "auto",
    template: Any = None,
    relevance_threshold: float = 1,
    include_first_stage: bool = True,
    show_progress_bar: bool | None = None,
    scorer_factory: Callable[[Any], Any] | None = None,
    fusion: FusionConfig | str | None = None,
    folds: int = 5,
    seed: int = 0,
    verdicts: bool = True,
) -> Comparison:
    """Evaluate several rerankers side by side on the same candidates.

    Args:
        models: ``{label: scorer or model path}`` or a list of scorers / paths (labelled by
            folder name).
        dataset, split, top_k, max_queries, ks, candidates, template: as in
            :func:`evaluate_reranker`; so are relevance_threshold and show_progress_bar.
        include_first_stage: also report the first-stage order (first column).
        scorer_factory: builds a scorer from a path (default ``CrossEncoderScorer(path)``),
            e.g. ``lambda p: CrossEncoderScorer(p, max_length=256)``.
        fusion: also report each reranker fused with the first stage (column ``"<label> +
            fusion (...)"``): a :class:`~bge_rerank_plugins.fusion.FusionConfig` (fixed), or
            ``"auto"`` / ``"blend"`` / ``"rrf"``: the weight (and, for ``"auto"``, the method)
            fitted by ``folds``-fold cross-validation over queries, so the fused figures are
            held-out ones. ``None``: no fused run.
        folds, seed: the cross-validation's folds and the seed of the folds and of the tests.
        verdicts: add, per reranker, a paired test against the first stage (randomisation
            test and bootstrap CI over queries on nDCG@10) and its verdict
            (:attr:`Comparison.verdicts`, printed under the table).

    Example:
        >>> cmp = evaluate_models({"base": "models/base", "tuned": "models/tuned"},
        ...                       "data/scifact", "dev", top_k=30)  # doctest: +SKIP
        >>> print(cmp.to_markdown()); cmp.save("runs/eval")  # doctest: +SKIP
    """
    data = as_dataset(dataset, split)
    source = resolve_source(data, candidates)
    queries, first_stage, skipped = prepare_queries(
        data,
        top_k=top_k,
        max_queries=max_queries,
        candidates=source,
        relevance_threshold=relevance_threshold,
        template=template,
    )
    if isinstance(models, Mapping):
        items = list(models.items())
    else:
        items = [(None, m) for m in models]
    results: list[EvaluationResult] = []
    common: dict[str, Any] = {
        "ks": ks,
        "relevance_threshold": relevance_threshold,
        "queries": queries,
        "template": template,
    }
    first = evaluate_reranker(None, data, name=first_stage, **common)
    first.num_skipped, first.kind = skipped, "first stage"
    if include_first_stage:
        results.append(first)
    used: set[str] = {r.name for r in results}
    judged: list[tuple[EvaluationResult, EvaluationResult | None, str | None]] = []
    for label, model in items:
        if scorer_factory is not None and isinstance(model, (str, os.PathLike)):
            model = scorer_factory(model)
        scorer = as_scorer(model)
        label = label or system_name(scorer)
        base, n = label, 2
        while label in used:
            label, n = f"{base} ({n})", n + 1
        used.add(label)
        if scorer is None or fusion is None:
            result = evaluate_reranker(
                scorer, data, name=label, show_progress_bar=show_progress_bar, **common
            )
            fused, fit = None, None
        else:
            result, fused, fit = reranked_and_fused(
                scorer, label, data, queries, fusion, ks=ks, template=template,
                relevance_threshold=relevance_threshold, show_progress_bar=show_progress_bar,
                folds=folds, seed=seed,
            )  # fmt: skip
        result.num_skipped = skipped
        results.append(result)
        if fused is not None:
            fused.num_skipped = skipped
            results.append(fused)
        if scorer is not None:
            how = fusion.describe() if isinstance(fusion, FusionConfig) else None
            judged.append((result, fused, how or (f"CV; {fit.config.describe()}" if fit else None)))
    comparison = Comparison(results, str(data.path), data.split, top_k, source, tuple(ks))
    if verdicts and queries:
        comparison.verdicts = verdicts_for(first, judged, ks, seed)
    return comparison
