"""Training datasets for the engine: groups, a per-epoch negative redraw, pointwise rows.

Every record is parsed and validated by :mod:`bge_rerank_plugins.finetune.data` (non-empty
texts, finite labels and teacher scores, conflicting repeats); this module only arranges the
parsed records for a loss:

* :func:`training_groups`: for the grouped losses, one group per positive (the positive plus
  ``num_negatives`` negatives); a query with too few negatives borrows random passages of
  other queries;
* :func:`redraw_negatives`: a ``datasets`` transform that draws fresh negatives from a group's
  pool each time the group is read, so each epoch sees other hard negatives;
* :func:`pointwise_rows`: (query, passage, label) rows for the pointwise losses; LlamaIndex
  samples keep their own score as the label.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .data import (
    PointwiseExample,
    TrainingGroup,
    detect_format,
    from_llama_index_samples,
    groups_to_pointwise,
    load_training_data,
)

__all__ = [
    "Group",
    "build_train_dataset",
    "is_llama_index",
    "pointwise_rows",
    "redraw_negatives",
    "reranking_samples",
    "training_groups",
]

logger = logging.getLogger(__name__)


@dataclass
class Group:
    """One training group: a query, its positive first, then its negatives.

    Attributes:
        query: the query text.
        docs: the positive, then the negatives of this draw.
        labels: 1.0 for the positive, 0.0 for each negative.
        teacher: teacher scores of ``docs`` (distillation), or None.
        pool: every negative of the query when it has more than ``num_negatives``:
            ``docs[1:]`` is redrawn from it each time the group is read; None otherwise.
        pool_teacher: teacher scores of ``pool``.
    """

    query: str
    docs: list[str]
    labels: list[float]
    teacher: list[float] | None = None
    pool: list[str] | None = None
    pool_teacher: list[float] | None = None


def is_llama_index(dataset: Sequence[Any]) -> bool:
    """Whether every record of ``dataset`` is a LlamaIndex sample (``query``, ``context``,
    ``score``)."""
    try:
        return all(detect_format(record) == "llama_index" for record in dataset)
    except ValueError:  # an unknown record: load_training_data says where and why
        return False


def pointwise_rows(dataset: Sequence[Any], what: str) -> list[PointwiseExample]:
    """(query, passage, label) rows of any supported input, validated by :mod:`.data`.

    LlamaIndex samples keep their own score as the label (soft labels for BCE); other formats
    are grouped first and flattened with label 1.0 for positives, 0.0 for negatives. Errors name
    ``what[index]``.
    """
    if is_llama_index(dataset):
        return from_llama_index_samples(dataset, name=what)
    return groups_to_pointwise(load_training_data(dataset, name=what))


def training_groups(
    dataset: Sequence[Any], num_negatives: int, rng: random.Random, what: str
) -> list[Group]:
    """One group per positive: the positive first, then ``num_negatives`` negatives.

    Negatives are drawn from the query's own negatives; a query with too few borrows random
    passages of other queries. A query with more negatives than ``num_negatives`` keeps them
    all as its pool, from which :func:`redraw_negatives` samples anew on every read. With
    teacher scores (``positive_scores``/``negative_scores``) the group carries them for
    distillation.

    Raises:
        ValueError: no query has both a positive and a negative (own or borrowed).
    """
    records: list[TrainingGroup] = load_training_data(dataset, name=what)
    by_query: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = by_query.setdefault(record.query, {"pos": [], "neg": [], "teacher": {}})
        entry["pos"] += list(record.positives)
        entry["neg"] += list(record.negatives)
        if record.has_scores:
            texts = [*record.positives, *record.negatives]
            scores = [*record.positive_scores, *record.negative_scores]  # type: ignore[misc]
            entry["teacher"].update(zip(texts, map(float, scores)))
    pool = sorted({t for e in by_query.values() for t in e["pos"] + e["neg"]})
    groups: list[Group] = []
    borrowed = 0
    for query, entry in by_query.items():
        own = set(entry["pos"])
        negatives = [n for n in dict.fromkeys(entry["neg"]) if n not in own]
        for positive in dict.fromkeys(entry["pos"]):
            if len(negatives) >= num_negatives:
                chosen = rng.sample(negatives, num_negatives)
            else:
                chosen = list(negatives)
                taken = own | set(chosen)
                # rejection sampling from the pool: cheap for large data, bounded for tiny data
                for _ in range(20 * num_negatives):
                    if len(chosen) >= num_negatives or len(taken) >= len(pool):
                        break
                    text = pool[rng.randrange(len(pool))]
                    if text not in taken:
                        taken.add(text)
                        chosen.append(text)
                        borrowed += 1
            if not chosen:
                continue
            docs = [positive, *chosen]
            teacher = pool_teacher = None
            if entry["teacher"]:
                floor = min(entry["teacher"].values())
                teacher = [entry["teacher"].get(d, floor) for d in docs]
                pool_teacher = [entry["teacher"].get(d, floor) for d in negatives]
            group = Group(query, docs, [1.0] + [0.0] * len(chosen), teacher)
            if len(negatives) > num_negatives:
                group.pool, group.pool_teacher = negatives, pool_teacher
            groups.append(group)
    if borrowed:
        logger.info("Borrowed %d random negatives from other queries.", borrowed)
    if not groups:
        raise ValueError(
            f"{what} has no query with a positive passage (label >= 0.5) and a negative one; "
            "the grouped 'softmax' loss needs both (or use loss='bce')."
        )
    return groups


def redraw_negatives(num_negatives: int, rng: random.Random) -> Any:
    """A ``datasets`` transform that draws fresh negatives from each group's pool per read.

    With fixed negatives a small training set is memorised within a few epochs (measured on
    SciFact: the training loss reached 0.001 while dev nDCG@10 fell); a new draw per epoch
    shows the model many more of the query's hard negatives at no extra cost per step.
    """

    def transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"query": batch["query"], "docs": [], "label": batch["label"]}
        has_teacher = "teacher" in batch
        if has_teacher:
            out["teacher"] = []
        for row, docs in enumerate(batch["docs"]):
            pool = batch["pool"][row]
            teacher = batch["teacher"][row] if has_teacher else None
            if pool:
                picks = rng.sample(range(len(pool)), num_negatives)
                docs = [docs[0], *(pool[i] for i in picks)]
                if teacher is not None:
                    pool_teacher = batch["pool_teacher"][row]
                    teacher = [teacher[0], *(pool_teacher[i] for i in picks)]
            out["docs"].append(docs)
            if has_teacher:
                out["teacher"].append(teacher)
        # the column order the loss expects: query, docs[, teacher], label
        return {k: out[k] for k in ("query", "docs", "teacher", "label") if k in out}

    return transform


def build_train_dataset(
    samples: Sequence[Any],
    *,
    loss: Any,
    num_negatives: int,
    rng: random.Random,
    what: str,
    rows: Sequence[PointwiseExample] | None = None,
) -> Any:
    """The ``datasets.Dataset`` the trainer reads for a resolved ``loss``.

    Grouped losses (``"softmax"``, ``"distill"``): columns ``query``, ``docs``[, ``teacher``],
    ``label`` (negatives redrawn per read). Any other loss: pointwise ``query``, ``context``,
    ``label`` columns, from ``rows`` when given (already parsed) or from ``samples``.

    Raises:
        ValueError: ``loss="distill"`` and a record has no teacher scores.
    """
    from datasets import Dataset

    from .recipe import is_grouped

    if not is_grouped(loss):
        rows = rows if rows is not None else pointwise_rows(samples, what)
        return Dataset.from_dict(
            {
                "query": [r.query for r in rows],
                "context": [r.passage for r in rows],
                "label": [r.label for r in rows],
            }
        )
    groups = training_groups(samples, num_negatives, rng, what)
    columns: dict[str, list[Any]] = {
        "query": [g.query for g in groups],
        "docs": [g.docs for g in groups],
    }
    if loss == "distill":
        if any(g.teacher is None for g in groups):
            raise ValueError(
                "loss='distill' needs teacher scores (positive_scores and negative_scores) "
                f"on every record of {what}."
            )
        columns["teacher"] = [g.teacher for g in groups]  # type: ignore[misc]
    columns["label"] = [g.labels for g in groups]
    columns["pool"] = [g.pool or [] for g in groups]
    if loss == "distill":
        columns["pool_teacher"] = [g.pool_teacher or [] for g in groups]
    dataset = Dataset.from_dict(columns)
    dataset.set_transform(redraw_negatives(num_negatives, rng))
    return dataset


def reranking_samples(rows: Sequence[PointwiseExample]) -> list[dict[str, Any]]:
    """Validation rows as ``{"query", "positive": [..], "negative": [..]}`` ranking samples.

    A row with a label > 0.5 is a positive; queries without both kinds are left out (no
    ranking metric can be computed for them).
    """
    by_query: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        entry = by_query.setdefault(row.query, {"positive": [], "negative": []})
        entry["positive" if row.label > 0.5 else "negative"].append(row.passage)
    return [
        {"query": q, "positive": e["positive"], "negative": e["negative"]}
        for q, e in by_query.items()
        if e["positive"] and e["negative"]
    ]
