"""Running rerankers over prepared queries: :func:`evaluate_reranker` and :func:`evaluate_models`.

All (query, candidate) pairs of a split go to the scorer in ONE ``score_many`` call; each
query's candidates are then sorted best first (equal scores keep the first-stage order) and
compared to the qrels. A progress-bar choice is passed to that call as an argument
(``score_many(..., show_progress_bar=...)``, when the scorer's method takes it), never set on
the scorer, so a scorer shared with other threads (a server, say) is not changed.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..beir import BeirDataset, load_beir
from ..fields import PassageTemplate, best_first
from .candidates import EvalQuery, prepare_queries, resolve_source, resolve_template
from .metrics import DEFAULT_KS, check_k, metric_order, query_metrics
from .report import Comparison, EvaluationResult, QueryResult

__all__ = ["as_dataset", "as_scorer", "evaluate_models", "evaluate_reranker", "system_name"]

logger = logging.getLogger(__name__)

Ranking = tuple[tuple[str, ...], tuple[float, ...] | None]


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


def _takes_keyword(method: Any, name: str) -> bool:
    """Whether ``method`` has a parameter called ``name`` that can be passed by keyword."""
    try:
        parameter = inspect.signature(method).parameters.get(name)
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def _rank(query: EvalQuery, scores: Sequence[float]) -> Ranking:
    order = best_first(scores)
    return tuple(query.doc_ids[i] for i in order), tuple(float(scores[i]) for i in order)


def _aggregate(
    name: str,
    queries: Sequence[EvalQuery],
    rankings: Sequence[Ranking],
    ks: Sequence[int],
    threshold: float,
    skipped: int,
    pairs: int,
    seconds: float,
) -> EvaluationResult:
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


def _score_all(
    scorer: Any,
    queries: Sequence[EvalQuery],
    dataset: BeirDataset,
    template: PassageTemplate,
    show_progress_bar: bool | None,
) -> list[list[float]]:
    texts = {}
    for query in queries:
        for doc_id in query.doc_ids:
            if doc_id not in texts:
                texts[doc_id] = template.render(dataset.corpus[doc_id])
    candidates = [[texts[d] for d in q.doc_ids] for q in queries]
    options: dict[str, Any] = {}
    if show_progress_bar is not None:
        if _takes_keyword(scorer.score_many, "show_progress_bar"):
            options["show_progress_bar"] = show_progress_bar
        else:
            logger.debug(
                "%s.score_many takes no show_progress_bar; show_progress_bar=%r is not used",
                type(scorer).__name__,
                show_progress_bar,
            )
    scores = scorer.score_many([q.text for q in queries], candidates, **options)
    if len(scores) != len(queries) or any(len(s) != len(c) for s, c in zip(scores, candidates)):
        raise ValueError(
            f"{type(scorer).__name__}.score_many returned scores of the wrong shape: one list "
            "per query with one score per candidate is expected"
        )
    return scores


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
        scores = _score_all(model, queries, data, tpl, show_progress_bar)
        rankings = [_rank(q, s) for q, s in zip(queries, scores)]
        label = name or system_name(model)
        pairs = sum(len(q.doc_ids) for q in queries)
    seconds = time.perf_counter() - start
    result = _aggregate(label, queries, rankings, ks, relevance_threshold, skipped, pairs, seconds)
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
    if include_first_stage:
        first = evaluate_reranker(None, data, name=first_stage, **common)
        first.num_skipped = skipped
        results.append(first)
    used: set[str] = {r.name for r in results}
    for label, model in items:
        if scorer_factory is not None and isinstance(model, (str, os.PathLike)):
            model = scorer_factory(model)
        scorer = as_scorer(model)
        label = label or system_name(scorer)
        base, n = label, 2
        while label in used:
            label, n = f"{base} ({n})", n + 1
        used.add(label)
        result = evaluate_reranker(
            scorer, data, name=label, show_progress_bar=show_progress_bar, **common
        )
        result.num_skipped = skipped
        results.append(result)
    return Comparison(results, str(data.path), data.split, top_k, source, tuple(ks))
