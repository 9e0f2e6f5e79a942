"""The first stage: each query's candidates, in first-stage order, cut to ``top_k``.

Candidates come from the dataset's ``candidates/<split>.jsonl`` (``"given"``) or from BM25 over
the whole corpus (``"bm25"``). A judged list without a ``ranked`` order is put in BM25 order
over its own candidates, BM25 ties broken by a shuffle seeded with the query id
(:func:`shuffled_bm25_order`): judged lists come positives first, and that order must never
leak into the baseline or into tie-breaking.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..beir import BeirDataset
from ..bm25 import Bm25Index
from ..fields import PassageTemplate, as_template

__all__ = [
    "CANDIDATE_SOURCES",
    "EvalQuery",
    "prepare_queries",
    "resolve_source",
    "resolve_template",
    "shuffled_bm25_order",
]

logger = logging.getLogger(__name__)

#: The values of ``candidates=``.
CANDIDATE_SOURCES: tuple[str, ...] = ("auto", "given", "bm25")


@dataclass(frozen=True)
class EvalQuery:
    """One query to rerank: its text, its candidates in first-stage order, its grades, and the
    first stage's scores when known (BM25 over the corpus; ``None`` for a given ranked list)."""

    qid: str
    text: str
    doc_ids: tuple[str, ...]
    grades: Mapping[str, float]
    first_stage_scores: tuple[float, ...] | None = None


def resolve_template(template: Any, scorer: Any = None) -> PassageTemplate:
    """How documents become passage text: ``template``, else the scorer's, else title + text."""
    if template is None:
        template = getattr(scorer, "template", None)
    return as_template(template)


def resolve_source(dataset: BeirDataset, candidates: str) -> str:
    """``"given"`` or ``"bm25"``: ``"auto"`` means ``"given"`` when the candidates file exists.

    Raises:
        ValueError: ``candidates`` is not one of :data:`CANDIDATE_SOURCES`.
    """
    if candidates not in CANDIDATE_SOURCES:
        raise ValueError(f"candidates must be one of {CANDIDATE_SOURCES}, got {candidates!r}")
    if candidates == "auto":
        return "given" if dataset.candidates is not None else "bm25"
    return candidates


def shuffled_bm25_order(bm25: Bm25Index, qid: str, query: str, ids: Sequence[str]) -> list[str]:
    """``ids`` in BM25 order for ``query``, ties in an order seeded by ``qid`` (not the file's).

    The ids are sorted, shuffled with ``random.Random(f"ties/{qid}")`` and then stably sorted
    by BM25 score, so equal BM25 scores never follow the file's positives-first order, and the
    same query always gets the same order.
    """
    shuffled = sorted(ids)
    random.Random(f"ties/{qid}").shuffle(shuffled)
    return bm25.rerank(query, shuffled)


def _check_count(value: Any, name: str) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


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
    source = resolve_source(dataset, candidates)
    _check_count(top_k, "top_k")
    _check_count(max_queries, "max_queries")
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
        logger.info("indexing %d documents with BM25", len(dataset.corpus))
        bm25 = Bm25Index.from_corpus(dataset.corpus, resolve_template(template))
    out: list[EvalQuery] = []
    missing = 0
    name = "BM25"
    for qid in selected:
        text = dataset.queries[qid].text
        first_scores: list[float] | None = None
        if source == "bm25":
            assert bm25 is not None
            hits = bm25.search(text, k=top_k or len(dataset.corpus))
            ids, first_scores = [d for d, _ in hits], [s for _, s in hits]
        else:
            cand = dataset.candidates.get(qid)  # type: ignore[union-attr]
            if cand is None:
                missing += 1
                ids = []
            elif cand.ranked is not None:
                ids = list(cand.ranked)  # the layout's "ranked" lists are in BM25 order
            else:
                assert bm25 is not None
                ids = shuffled_bm25_order(bm25, qid, text, cand.ids)
                name = "BM25 (over given candidates)"
        if top_k is not None:
            ids = ids[:top_k]
        scores = None if first_scores is None else tuple(first_scores[: len(ids)])
        out.append(EvalQuery(qid, text, tuple(ids), dict(dataset.qrels.get(qid, {})), scores))
    if missing:
        logger.warning(
            "%d of %d queries have no candidate list; they are evaluated with an empty ranking",
            missing,
            len(selected),
        )
    return out, name, skipped
