"""Reranking evaluation on BEIR-style folders: Hit@K, MRR@K, nDCG@K and Recall@K.

Each query's first-stage candidates (the given ``candidates/<split>.jsonl`` lists, or BM25
top-k computed with ``bm25s``) are cut to ``top_k``, scored by a reranker in ONE
``scorer.score_many(...)`` call for the whole split, re-sorted, and compared to the qrels. The
first-stage order itself is evaluated next to the rerankers.

Main entry points (signatures are stable; the fine-tuning engine calls them)::

    evaluate_reranker(scorer, dataset, split="dev", *, top_k=30, max_queries=None,
                      ks=(1, 3, 5, 10), candidates="auto", template=None,
                      relevance_threshold=1, name=None, show_progress_bar=None)
        -> EvaluationResult  # .metrics {"ndcg@10": 0.68, ...}, .per_query [QueryResult]

    evaluate_models({"base": dir_a, "tuned": dir_b}, dataset, split="dev", *, top_k=30, ...)
        -> Comparison        # .results [first stage, base, tuned], .to_markdown(), .save(dir)

``scorer`` is a :class:`~bge_rerank_plugins.CrossEncoderScorer`, a model id or directory (a
scorer is built for it), ``None`` (the first-stage order), or any object with a
``score_many(queries, candidates) -> list[list[float]]`` method (e.g. a wrapper around a model
being trained). ``dataset`` is a loaded :class:`~bge_rerank_plugins.beir.BeirDataset` or a
folder path.

Metric conventions (also in ``docs/evaluation.md``):

* A document is *relevant* when its qrels grade is >= ``relevance_threshold`` (default 1);
  documents without a qrels row have grade 0.
* ``hit@k``: 1 if a relevant document is in the top k, else 0.
* ``mrr@k``: 1 / rank of the first relevant document in the top k, else 0.
* ``recall@k``: relevant documents in the top k / all relevant documents of the query in the
  qrels (also those the first stage missed).
* ``ndcg@k``: DCG@k / IDCG@k with gain = grade (linear, as ``trec_eval``'s ``ndcg_cut``) and
  discount 1 / log2(rank + 1); the ideal ranking sorts *all* the query's judged grades.
* A query with no relevant document in the qrels is left out of every average and counted in
  ``EvaluationResult.num_skipped``; a query whose candidates miss all its relevant documents
  scores 0.
* Equal reranker scores keep the first-stage order (a stable sort).

Example:
    >>> from bge_rerank_plugins.evaluation import ndcg_at_k
    >>> round(ndcg_at_k(["d2", "d1"], {"d1": 2, "d2": 1}, k=2), 4)
    0.8597
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .beir import BeirDataset, Bm25Index, load_beir

__all__ = [
    "DEFAULT_KS",
    "Comparison",
    "EvalQuery",
    "EvaluationResult",
    "QueryResult",
    "evaluate_models",
    "evaluate_reranker",
    "hit_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "prepare_queries",
    "query_metrics",
    "recall_at_k",
]

logger = logging.getLogger(__name__)

#: The cut-offs reported by default.
DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10)
#: Metric families, in table order.
METRICS: tuple[str, ...] = ("hit", "mrr", "ndcg", "recall")
_LABELS = {"hit": "Hit", "mrr": "MRR", "ndcg": "nDCG", "recall": "Recall"}

Grades = Mapping[str, float]


# ---------------------------------------------------------------------- metrics
def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")


def hit_at_k(ranking: Sequence[str], grades: Grades, k: int, threshold: float = 1) -> float:
    """1.0 if a document with grade >= ``threshold`` is among the first ``k``, else 0.0.

    >>> hit_at_k(["a", "b"], {"b": 1}, k=1), hit_at_k(["a", "b"], {"b": 1}, k=2)
    (0.0, 1.0)
    """
    _check_k(k)
    return float(any(grades.get(d, 0) >= threshold for d in ranking[:k]))


def mrr_at_k(ranking: Sequence[str], grades: Grades, k: int, threshold: float = 1) -> float:
    """Reciprocal rank of the first relevant document within the first ``k`` (0.0 if none).

    >>> mrr_at_k(["a", "b", "c"], {"c": 1}, k=3)
    0.3333333333333333
    """
    _check_k(k)
    for rank, doc_id in enumerate(ranking[:k], start=1):
        if grades.get(doc_id, 0) >= threshold:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranking: Sequence[str], grades: Grades, k: int, threshold: float = 1) -> float:
    """Share of the query's relevant documents (all of them, per the qrels) in the first ``k``.

    Returns 0.0 when the query has no relevant document (such queries are skipped by
    :func:`evaluate_reranker`).

    >>> recall_at_k(["a", "b"], {"a": 1, "z": 1}, k=2)
    0.5
    """
    _check_k(k)
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
    _check_k(k)
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


def _metric_order(ks: Sequence[int]) -> list[str]:
    return [f"{m}@{k}" for m in METRICS for k in ks]


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class EvalQuery:
    """One query to rerank: its text, its candidates in first-stage order, its grades."""

    qid: str
    text: str
    doc_ids: tuple[str, ...]
    grades: Mapping[str, float]


@dataclass(frozen=True)
class QueryResult:
    """One query's outcome: the ranked ids (best first), their scores, its metrics."""

    qid: str
    ranking: tuple[str, ...]
    scores: tuple[float, ...] | None
    metrics: Mapping[str, float]


@dataclass
class EvaluationResult:
    """The outcome of one system (a reranker or the first-stage order) on one split.

    Attributes:
        name: the system's label.
        metrics: mean of each metric over the evaluated queries, e.g. ``{"ndcg@10": 0.68}``.
        per_query: one :class:`QueryResult` per evaluated query.
        num_queries: queries evaluated (in the averages).
        num_skipped: queries left out because the qrels give them no relevant document.
        num_pairs: (query, candidate) pairs scored.
        seconds: wall time of the scoring.
    """

    name: str
    metrics: dict[str, float]
    per_query: list[QueryResult] = field(default_factory=list, repr=False)
    num_queries: int = 0
    num_skipped: int = 0
    num_pairs: int = 0
    seconds: float = 0.0

    def to_dict(self, per_query: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; ``per_query=True`` adds each query's ranking and metrics."""
        out: dict[str, Any] = {
            "name": self.name,
            "metrics": self.metrics,
            "num_queries": self.num_queries,
            "num_skipped": self.num_skipped,
            "num_pairs": self.num_pairs,
            "seconds": round(self.seconds, 3),
        }
        if per_query:
            out["per_query"] = [
                {
                    "qid": r.qid,
                    "ranking": list(r.ranking),
                    "scores": None if r.scores is None else list(r.scores),
                    "metrics": dict(r.metrics),
                }
                for r in self.per_query
            ]
        return out


# ---------------------------------------------------------------------- candidates
_SOURCES = ("auto", "given", "bm25")


def _template(template: Any, scorer: Any = None) -> Any:
    from .fields import PassageTemplate

    if template is None:
        template = getattr(scorer, "template", None)
    if template is None:
        return PassageTemplate(("title", "text"))
    return template if isinstance(template, PassageTemplate) else PassageTemplate(template)


def prepare_queries(
    dataset: BeirDataset,
    *,
    top_k: int | None = 30,
    max_queries: int | None = None,
    candidates: str = "auto",
    relevance_threshold: float = 1,
    template: Any = None,
    bm25: Bm25Index | None = None,
) -> tuple[list[EvalQuery], str, int]:
    """The queries to rerank, each with its first-stage candidates cut to ``top_k``.

    Args:
        dataset: a loaded split.
        top_k: candidates kept per query (``None``: all).
        max_queries: evaluate only the first this many queries (qrels order) that have a
            relevant document.
        candidates: ``"given"`` (the candidates file: its ``ranked`` order; judged lists
            without one are sorted by BM25, BM25 ties broken by a shuffle seeded with the
            query id, so the file's positives-first order never leaks into the ranking),
            ``"bm25"`` (BM25 top ``top_k`` over the whole corpus, with ``bm25s``), or
            ``"auto"`` (``"given"`` when the file exists).
        relevance_threshold: the lowest grade that counts as relevant.
        template: renders documents for BM25 (default title + text).
        bm25: a prebuilt index to reuse.

    Returns:
        ``(queries, first_stage_name, num_skipped)``.
    """
    if candidates not in _SOURCES:
        raise ValueError(f"candidates must be one of {_SOURCES}, got {candidates!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if max_queries is not None and (not isinstance(max_queries, int) or max_queries < 1):
        raise ValueError(f"max_queries must be a positive int or None, got {max_queries!r}")
    source = candidates
    if source == "auto":
        source = "given" if dataset.candidates is not None else "bm25"
    if source == "given" and dataset.candidates is None:
        raise FileNotFoundError(
            f"candidates='given' but {dataset.path}/candidates/{dataset.split}.jsonl does not "
            "exist; use candidates='bm25' to retrieve with BM25"
        )
    skipped = 0
    selected: list[str] = []
    for qid in dataset.query_ids:
        if not dataset.relevant(qid, relevance_threshold):
            skipped += 1
            continue
        if max_queries is not None and len(selected) >= max_queries:
            continue
        selected.append(qid)
    needs_bm25 = source == "bm25" or any(
        dataset.candidates[q].ranked is None  # type: ignore[index]
        for q in selected
        if q in (dataset.candidates or {})
    )
    if needs_bm25 and bm25 is None:
        tpl = _template(template)
        logger.info("indexing %d documents with BM25", len(dataset.corpus))
        bm25 = Bm25Index.from_corpus(dataset.corpus, tpl)
    out: list[EvalQuery] = []
    missing = 0
    name = "BM25"
    for qid in selected:
        text = dataset.queries[qid].text
        if source == "bm25":
            assert bm25 is not None
            ids = [d for d, _ in bm25.search(text, k=top_k or len(dataset.corpus))]
        else:
            cand = dataset.candidates.get(qid)  # type: ignore[union-attr]
            if cand is None:
                missing += 1
                ids = []
            elif cand.ranked is not None:
                ids = list(cand.ranked)  # the layout's "ranked" lists are in BM25 order
            else:
                # Judged lists come positives first: sort and shuffle (seeded by the query id)
                # before the stable BM25 sort, so that BM25 ties never follow the labels.
                assert bm25 is not None
                ids = sorted(cand.ids)
                random.Random(f"ties/{qid}").shuffle(ids)
                ids = bm25.rerank(text, ids)
                name = "BM25 (over given candidates)"
        if top_k is not None:
            ids = ids[:top_k]
        out.append(EvalQuery(qid, text, tuple(ids), dict(dataset.qrels.get(qid, {}))))
    if missing:
        logger.warning(
            "%d of %d queries have no candidate list; they are evaluated with an empty ranking",
            missing,
            len(selected),
        )
    return out, name, skipped


# ---------------------------------------------------------------------- evaluation
def _as_scorer(scorer: Any) -> Any:
    if scorer is None or hasattr(scorer, "score_many"):
        return scorer
    if isinstance(scorer, (str, os.PathLike)):
        from .scorer import CrossEncoderScorer

        return CrossEncoderScorer(scorer)
    raise TypeError(
        f"scorer must be a CrossEncoderScorer, a model id or directory, None, or an object with "
        f"score_many(queries, candidates); got {type(scorer).__name__}"
    )


def _system_name(scorer: Any) -> str:
    name = getattr(scorer, "model_name", None) or type(scorer).__name__
    return Path(str(name)).name or str(name)


def _as_dataset(dataset: BeirDataset | str | os.PathLike[str], split: str) -> BeirDataset:
    if isinstance(dataset, BeirDataset):
        if split != dataset.split:
            logger.debug("using the loaded split %r (split=%r ignored)", dataset.split, split)
        return dataset
    return load_beir(dataset, split)


def _rank(query: EvalQuery, scores: Sequence[float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return tuple(query.doc_ids[i] for i in order), tuple(float(scores[i]) for i in order)


def _aggregate(
    name: str,
    queries: Sequence[EvalQuery],
    rankings: Sequence[tuple[tuple[str, ...], tuple[float, ...] | None]],
    ks: Sequence[int],
    threshold: float,
    skipped: int,
    pairs: int,
    seconds: float,
) -> EvaluationResult:
    per_query = []
    totals = dict.fromkeys(_metric_order(ks), 0.0)
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
    template: Any,
    show_progress_bar: bool | None,
) -> list[list[float]]:
    texts = {}
    for query in queries:
        for doc_id in query.doc_ids:
            if doc_id not in texts:
                texts[doc_id] = template.render(dataset.corpus[doc_id])
    candidates = [[texts[d] for d in q.doc_ids] for q in queries]
    override = show_progress_bar is not None and hasattr(scorer, "show_progress_bar")
    previous = getattr(scorer, "show_progress_bar", None)
    if override:
        scorer.show_progress_bar = show_progress_bar
    try:
        scores = scorer.score_many([q.text for q in queries], candidates)
    finally:
        if override:
            scorer.show_progress_bar = previous
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
        dataset: a :class:`BeirDataset` or a BEIR-style folder (loaded for ``split``).
        split: the qrels split, when ``dataset`` is a folder.
        top_k: first-stage candidates reranked per query (``None``: all of them).
        max_queries: evaluate only the first this many queries (with a relevant document).
        ks: the cut-offs K of the metrics.
        candidates: ``"auto"``, ``"given"`` or ``"bm25"`` (see :func:`prepare_queries`).
        template: how documents become passage text: a format string, field names or a
            ``PassageTemplate``; default the scorer's template, else ``title`` + ``text``.
        relevance_threshold: the lowest qrels grade that counts as relevant for Hit, MRR and
            Recall (nDCG always uses the grades as gains).
        name: the label in tables (default: the model folder's name).
        show_progress_bar: passed to the scorer for this call (``None``: its own default,
            a bar for runs of more than 2,000 pairs).
        queries: prepared queries (from :func:`prepare_queries`) to reuse across scorers.

    Returns:
        An :class:`EvaluationResult`; ``result.metrics["ndcg@10"]`` etc.

    Example:
        >>> result = evaluate_reranker("BAAI/bge-reranker-v2-m3", "data/scifact", "dev",
        ...                            top_k=30)  # doctest: +SKIP
        >>> round(result.metrics["ndcg@10"], 3)  # doctest: +SKIP
        0.712
    """
    for k in ks:
        _check_k(k)
    data = _as_dataset(dataset, split)
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
    model = _as_scorer(scorer)
    start = time.perf_counter()
    if model is None:
        rankings: list[Any] = [(q.doc_ids, None) for q in queries]
        label = name or first_stage
        pairs = 0
    else:
        scores = _score_all(model, queries, data, _template(template, model), show_progress_bar)
        rankings = [_rank(q, s) for q, s in zip(queries, scores)]
        label = name or _system_name(model)
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


# ---------------------------------------------------------------------- comparisons
@dataclass
class Comparison:
    """Several systems evaluated on the same queries and candidates.

    Attributes:
        results: one :class:`EvaluationResult` per system, the first-stage order first.
        dataset, split: what was evaluated.
        top_k: candidates reranked per query.
        candidates: where the candidates came from (``"given"`` or ``"bm25"``).
        ks: the metric cut-offs.
    """

    results: list[EvaluationResult]
    dataset: str
    split: str
    top_k: int | None
    candidates: str
    ks: tuple[int, ...] = DEFAULT_KS

    def __getitem__(self, name: str) -> EvaluationResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no system named {name!r}; have {[r.name for r in self.results]}")

    def to_markdown(self, digits: int = 3) -> str:
        """A Markdown table: one row per metric, one column per system; best value in bold."""
        names = [r.name for r in self.results]
        lines = [
            "| metric | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for key in _metric_order(self.ks):
            family, k = key.split("@")
            values = [r.metrics.get(key, float("nan")) for r in self.results]
            best = max(values)
            cells = [
                f"**{v:.{digits}f}**" if len(values) > 1 and v == best else f"{v:.{digits}f}"
                for v in values
            ]
            lines.append(f"| {_LABELS[family]}@{k} | " + " | ".join(cells) + " |")
        first = self.results[0] if self.results else None
        if first is not None:
            lines.append("")
            lines.append(
                f"{Path(self.dataset).name} / {self.split}: {first.num_queries} queries "
                f"({first.num_skipped} without a relevant document skipped), top "
                f"{self.top_k if self.top_k is not None else 'all'} {self.candidates} candidates."
            )
        return "\n".join(lines)

    def to_dict(self, per_query: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (``per_query=True`` adds each query's ranking)."""
        return {
            "dataset": str(self.dataset),
            "split": self.split,
            "top_k": self.top_k,
            "candidates": self.candidates,
            "ks": list(self.ks),
            "systems": [r.to_dict(per_query) for r in self.results],
        }

    def plot(self, path: str | os.PathLike[str], title: str | None = None) -> Path:
        """Draw the metrics against K, one line per system, into a PNG (needs matplotlib)."""
        try:
            from matplotlib.figure import Figure
        except ImportError as error:
            raise ImportError(
                "the chart needs matplotlib: pip install 'bge-rerank-plugins[eval]'"
            ) from error
        figure = Figure(figsize=(10, 7), layout="constrained")
        axes = figure.subplots(2, 2, sharex=True)
        for ax, family in zip(axes.flat, METRICS):
            for result in self.results:
                ys = [result.metrics[f"{family}@{k}"] for k in self.ks]
                style = "--" if result.per_query and result.per_query[0].scores is None else "-"
                ax.plot(self.ks, ys, style, marker="o", label=result.name)
            ax.set_title(f"{_LABELS[family]}@K")
            ax.set_xticks(list(self.ks))
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        for ax in axes[1]:
            ax.set_xlabel("K")
        axes.flat[0].legend(loc="lower right", fontsize="small")
        figure.suptitle(
            title
            or f"{Path(self.dataset).name} / {self.split}: reranking top "
            f"{self.top_k if self.top_k is not None else 'all'} {self.candidates} candidates"
        )
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=110)
        return out

    def save(self, out_dir: str | os.PathLike[str], chart: bool = True) -> dict[str, Path]:
        """Write ``table.md``, ``metrics.json`` (with per-query rankings) and ``chart.png``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"table": out / "table.md", "metrics": out / "metrics.json"}
        paths["table"].write_text(self.to_markdown() + "\n", encoding="utf-8")
        paths["metrics"].write_text(
            json.dumps(self.to_dict(per_query=True), indent=1, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        if chart:
            paths["chart"] = self.plot(out / "chart.png")
        return paths


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
    data = _as_dataset(dataset, split)
    source = candidates
    if source == "auto":
        source = "given" if data.candidates is not None else "bm25"
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
    common = {
        "ks": ks,
        "relevance_threshold": relevance_threshold,
        "queries": queries,
        "template": template,
    }
    if include_first_stage:
        first = evaluate_reranker(None, data, name=first_stage, **common)  # type: ignore[arg-type]
        first.num_skipped = skipped
        results.append(first)
    used: set[str] = {r.name for r in results}
    for label, model in items:
        if scorer_factory is not None and isinstance(model, (str, os.PathLike)):
            model = scorer_factory(model)
        scorer = _as_scorer(model)
        label = label or _system_name(scorer)
        base, n = label, 2
        while label in used:
            label, n = f"{base} ({n})", n + 1
        used.add(label)
        result = evaluate_reranker(
            scorer,
            data,
            name=label,
            show_progress_bar=show_progress_bar,
            **common,  # type: ignore[arg-type]
        )
        result.num_skipped = skipped
        results.append(result)
    return Comparison(results, str(data.path), data.split, top_k, source, tuple(ks))
