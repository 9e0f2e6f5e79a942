"""The engine's own yardstick: queries held out of the training data, and nDCG@10 on them.

When no ``val_dataset`` is given, :class:`~bge_rerank_plugins.finetune.engine.
CrossEncoderFinetuneEngine` keeps a few of the training queries apart (by query, never by row,
so no held-out query has a single passage in training) and ranks each held-out query's passages
four ways: the order the samples came in (when that is a retrieval order), BM25 over the
passages, the base model and the fine-tuned model. The figures go to the log and to
``training_summary.json``, the best checkpoint is chosen on these queries, and a fine-tuned
model that ranks them worse than the order it was given draws a warning.

>>> from bge_rerank_plugins.finetune.holdout import split_by_query
>>> rows = [{"query": f"q{i % 4}", "context": f"p{i}", "score": i < 4} for i in range(8)]
>>> train, held_out = split_by_query(rows, 1, seed=0)
>>> len(train), len(held_out), {r["query"] for r in held_out} & {r["query"] for r in train}
(6, 2, set())
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "AUTO_MIN_QUERIES",
    "HeldOutQuery",
    "HeldOutReport",
    "held_out_count",
    "held_out_queries",
    "pool_ndcg",
    "random_ndcg",
    "split_by_query",
]

logger = logging.getLogger(__name__)

#: ``holdout="auto"`` holds out queries only when the data has at least this many.
AUTO_MIN_QUERIES = 50
# "auto": a tenth of the queries, at least 20 and at most 100
_AUTO_SHARE, _AUTO_FLOOR, _AUTO_CAP = 0.1, 20, 100
_K = 10


def query_of(record: Any) -> str:
    """The query text of a training record of any list format (dict or object)."""
    value = record.get("query") if isinstance(record, Mapping) else getattr(record, "query", None)
    return str(value)


def held_out_count(spec: int | float | str | None, queries: int) -> int:
    """How many of ``queries`` distinct queries ``holdout=spec`` keeps apart.

    ``"auto"``: a tenth, at least 20 and at most 100, when there are at least
    :data:`AUTO_MIN_QUERIES` queries (else none); an int: that many; a float in (0, 1): that
    share; 0 or None: none. At least one query always stays in training.
    """
    if spec is None or spec == 0:
        return 0
    if spec == "auto":
        if queries < AUTO_MIN_QUERIES:
            return 0
        return min(_AUTO_CAP, max(_AUTO_FLOOR, round(_AUTO_SHARE * queries)))
    count = round(spec * queries) if isinstance(spec, float) else int(spec)
    return max(0, min(count, queries - 1))


def split_by_query(
    dataset: Sequence[Any], spec: int | float | str | None, *, seed: int
) -> tuple[list[Any], list[Any]]:
    """``dataset`` split into (training records, held-out records), by query (seeded).

    Records keep their order within each part. A record list of any format the engine reads
    works (each record has a ``query``).
    """
    queries = list(dict.fromkeys(query_of(r) for r in dataset))
    count = held_out_count(spec, len(queries))
    if not count:
        return list(dataset), []
    chosen = set(random.Random(seed).sample(queries, count))
    train = [r for r in dataset if query_of(r) not in chosen]
    held_out = [r for r in dataset if query_of(r) in chosen]
    return train, held_out


@dataclass(frozen=True)
class HeldOutQuery:
    """One held-out query: its passages in the order given, and which of them are relevant."""

    query: str
    docs: tuple[str, ...]
    relevant: frozenset[int]

    @property
    def label_sorted(self) -> bool:
        """Whether every relevant passage comes before every other one (a label-sorted list,
        not a retrieval order)."""
        return all(i in self.relevant for i in range(len(self.relevant)))


def held_out_queries(
    records: Sequence[Any], *, name: str = "held-out records"
) -> list[HeldOutQuery]:
    """The held-out records as :class:`HeldOutQuery` items (queries with a relevant passage and
    another one only; a ranking metric means nothing for the rest).

    Pointwise records (LlamaIndex samples, ``query``/``passage`` rows) keep the order they came
    in; grouped records list their positives first.
    """
    from .data import load_training_data

    order: dict[str, list[str]] = {}
    for record in records:
        text = _passage_of(record)
        if text is not None:
            order.setdefault(query_of(record), []).append(text)
    items = []
    for group in load_training_data(list(records), name=name):
        relevant = set(group.positives)
        given = order.get(group.query) or [*group.positives, *group.negatives]
        docs = tuple(dict.fromkeys(d for d in given if d in relevant or d in group.negatives))
        if relevant and len(docs) > len(relevant):
            marks = frozenset(i for i, d in enumerate(docs) if d in relevant)
            items.append(HeldOutQuery(group.query, docs, marks))
    return items


def _passage_of(record: Any) -> str | None:
    for name in ("context", "passage"):
        value = record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)
        if isinstance(value, str):
            return value
    return None


def pool_ndcg(items: Sequence[HeldOutQuery], scores: Sequence[Sequence[float]]) -> float:
    """Mean nDCG@10 of ranking each item's passages by ``scores`` (ties keep the given order)."""
    from ..evaluation.metrics import ndcg_at_k

    values = []
    for item, row in zip(items, scores, strict=True):
        ranking = sorted(range(len(item.docs)), key=lambda i: -float(row[i]))
        grades = {str(i): 1 for i in item.relevant}
        values.append(ndcg_at_k([str(i) for i in ranking], grades, _K))
    return sum(values) / len(values) if values else math.nan


def random_ndcg(items: Sequence[HeldOutQuery], *, draws: int = 200, seed: int = 0) -> float:
    """Expected nDCG@10 of a random order of each item's passages (seeded Monte Carlo)."""
    rng = random.Random(seed)
    total = 0.0
    for _ in range(draws):
        total += pool_ndcg(items, [[rng.random() for _ in item.docs] for item in items])
    return total / draws


def given_order_scores(items: Sequence[HeldOutQuery]) -> list[list[float]]:
    """Scores that rank each item's passages in the order they were given."""
    return [[-float(i) for i in range(len(item.docs))] for item in items]


def bm25_scores(items: Sequence[HeldOutQuery], corpus: Sequence[str]) -> list[list[float]]:
    """BM25 scores of each item's passages, the index built over ``corpus`` (all passages)."""
    return bm25_list_scores([i.query for i in items], [i.docs for i in items], corpus)


def bm25_list_scores(
    queries: Sequence[str], passages: Sequence[Sequence[str]], corpus: Sequence[str]
) -> list[list[float]]:
    """BM25 score of each ``passages[i]`` for ``queries[i]``, the index built over ``corpus``
    and those passages (each distinct text indexed once)."""
    from ..bm25 import Bm25Index

    texts = list(dict.fromkeys([*corpus, *(d for docs in passages for d in docs)]))
    index = Bm25Index([str(i) for i in range(len(texts))], texts)
    position = {t: i for i, t in enumerate(texts)}
    out = []
    for query, docs in zip(queries, passages):
        every = index.scores(query)
        out.append([float(every[position[d]]) for d in docs])
    return out


def model_scores(
    model: Any, items: Sequence[HeldOutQuery], *, batch_size: int = 32
) -> tuple[list[list[float]], float]:
    """A sentence-transformers ``CrossEncoder``'s scores of each item's passages, and the
    seconds it took per pair (the engine sizes its time budget from it)."""
    pairs = [(item.query, doc) for item in items for doc in item.docs]
    started = time.perf_counter()
    flat = model.predict(pairs, batch_size=batch_size, show_progress_bar=False)
    per_pair = (time.perf_counter() - started) / max(len(pairs), 1)
    out, at = [], 0
    for item in items:
        out.append([float(v) for v in flat[at : at + len(item.docs)]])
        at += len(item.docs)
    return out, per_pair


@dataclass
class HeldOutReport:
    """nDCG@10 on the held-out queries, each ordering that was measured (None: not measured).

    Attributes:
        queries: held-out queries with a relevant passage and another one.
        random: the expected nDCG@10 of a random order (the floor an untrained model sits at).
        given: the order the samples came in (None when it lists relevant passages first: a
            label-sorted list is no retrieval order).
        bm25: BM25 over the training passages.
        base: the base model before training.
        teacher: the warm-start teacher (the base encoder's own similarity), when one was used.
        finetuned: the saved model after training.
    """

    queries: int
    random: float
    given: float | None = None
    bm25: float | None = None
    base: float | None = None
    teacher: float | None = None
    finetuned: float | None = None
    notes: list[str] = field(default_factory=list)

    def first_stage(self) -> tuple[str, float] | None:
        """The order the model must beat: the given order when there is one, else BM25."""
        if self.given is not None:
            return "the given order", self.given
        if self.bm25 is not None:
            return "BM25 over the passages", self.bm25
        return None

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def line(self) -> str:
        """The figures in one log line."""
        parts = [f"{self.queries} held-out queries, nDCG@10: random {self.random:.3f}"]
        for name in ("given", "bm25", "base", "teacher", "finetuned"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name} {value:.3f}")
        return ", ".join(parts)

    def check(self) -> None:
        """Log the figures, and warn when the fine-tuned model ranks the held-out queries worse
        than the order it was given (or than the base model)."""
        logger.info("Held-out yardstick: %s.", self.line())
        if self.finetuned is None:
            return
        reference = self.first_stage()
        if reference is not None and self.finetuned < reference[1]:
            logger.warning(
                "The fine-tuned model ranks the %d held-out queries worse than %s "
                "(nDCG@10 %.3f < %.3f): rerank with it only behind fusion with the first stage, "
                "or give it more training data or time (max_minutes).",
                self.queries,
                reference[0],
                self.finetuned,
                reference[1],
            )
        if self.base is not None and self.finetuned < self.base - 1e-9:
            logger.warning(
                "The fine-tuned model ranks the held-out queries worse than the base model "
                "(nDCG@10 %.3f < %.3f); keep the base model, or lower learning_rate.",
                self.finetuned,
                self.base,
            )
