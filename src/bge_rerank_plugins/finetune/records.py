"""Training records: one record type for every format, its pointwise view, the converters.

Every format is read into :class:`TrainingGroup` (a query, its positive passages, its negative
passages, optional teacher scores); :class:`PointwiseExample` is the (query, passage, label)
view for pointwise losses. The rules that hold whatever the source:

* texts are non-empty strings; labels and teacher scores are finite numbers (``NaN`` and
  ``Infinity`` are errors: :func:`check_text`, :func:`check_number`);
* pointwise rows are grouped by query (first-appearance order): a row whose label is >=
  ``positive_threshold`` (0.5) is a positive; labels other than 0 and 1 (soft or graded labels)
  are kept as the group's scores;
* a pointwise row repeated with the same label is kept once, with a warning that counts them;
  a (query, passage) pair given twice with two different labels is an error naming both places
  (which one is right cannot be guessed).

The formats are parsed in :mod:`bge_rerank_plugins.finetune.formats`, files and BEIR folders
read in :mod:`bge_rerank_plugins.finetune.sources`; :mod:`bge_rerank_plugins.finetune.data`
re-exports all of them.

>>> groups_from_pointwise([PointwiseExample("q", "good", 1.0), PointwiseExample("q", "bad", 0)])
[TrainingGroup(query='q', positives=('good',), negatives=('bad',), positive_scores=None, negative_scores=None)]
"""  # noqa: E501

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PointwiseExample",
    "TrainingGroup",
    "check_number",
    "check_text",
    "dedupe_rows",
    "groups_from_pointwise",
    "groups_to_pointwise",
]

# The training-data modules all log under the facade's name, so a logging setup keyed on
# ``bge_rerank_plugins.finetune.data`` keeps working after the split.
logger = logging.getLogger("bge_rerank_plugins.finetune.data")


def check_text(value: Any, where: str) -> str:
    """``value`` if it is a non-empty string; ``ValueError`` naming ``where`` otherwise.

    >>> check_text("a passage", "records[0]: field 'passage'")
    'a passage'
    """
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__} {value!r:.60}")
    if not value.strip():
        raise ValueError(f"{where} is empty")
    return value


def check_number(value: Any, where: str) -> float:
    """``value`` as a float if it is a finite number (a bool counts as 0 / 1).

    Raises:
        ValueError: not a number, or ``NaN`` / infinite (``where`` names the field).

    >>> check_number(True, "records[0]: field 'score'")
    1.0
    """
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {type(value).__name__} {value!r:.60}")
    if not math.isfinite(value):
        raise ValueError(
            f"{where} must be a finite number, got {value!r}: a NaN or infinite label or teacher "
            "score would turn the training loss and the weights into NaN"
        )
    return float(value)


@dataclass(frozen=True)
class TrainingGroup:
    """One query with its positive and negative passages (texts).

    Attributes:
        query: the query text.
        positives: relevant passages.
        negatives: non-relevant (ideally hard) passages.
        positive_scores, negative_scores: optional teacher scores (or soft labels), one per
            passage, for distillation; both ``None`` or both given.

    >>> TrainingGroup("q", ["p"], ["n1", "n2"]).size
    3
    """

    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...] = ()
    positive_scores: tuple[float, ...] | None = None
    negative_scores: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_text(self.query, "TrainingGroup.query")
        for name in ("positives", "negatives"):
            values = getattr(self, name)
            if isinstance(values, str):
                raise ValueError(f"TrainingGroup.{name} must be a list of strings, got one string")
            values = tuple(values)
            for i, value in enumerate(values):
                check_text(value, f"TrainingGroup.{name}[{i}]")
            object.__setattr__(self, name, values)
        if (self.positive_scores is None) != (self.negative_scores is None):
            raise ValueError(
                "TrainingGroup: give both positive_scores and negative_scores, or neither"
            )
        for name, texts in (("positive_scores", "positives"), ("negative_scores", "negatives")):
            scores = getattr(self, name)
            if scores is None:
                continue
            scores = tuple(
                check_number(s, f"TrainingGroup.{name}[{i}]") for i, s in enumerate(scores)
            )
            if len(scores) != len(getattr(self, texts)):
                raise ValueError(
                    f"TrainingGroup.{name} has {len(scores)} values for "
                    f"{len(getattr(self, texts))} {texts}"
                )
            object.__setattr__(self, name, scores)

    @property
    def size(self) -> int:
        """Number of passages (positives + negatives)."""
        return len(self.positives) + len(self.negatives)

    @property
    def has_scores(self) -> bool:
        """Whether teacher scores are attached."""
        return self.positive_scores is not None

    def to_dict(self) -> dict[str, Any]:
        """The FlagEmbedding JSONL record: ``{"query", "pos", "neg", "pos_scores"?, ...}``."""
        out: dict[str, Any] = {
            "query": self.query,
            "pos": list(self.positives),
            "neg": list(self.negatives),
        }
        if self.has_scores:
            out["pos_scores"] = list(self.positive_scores or ())
            out["neg_scores"] = list(self.negative_scores or ())
        return out


@dataclass(frozen=True)
class PointwiseExample:
    """One (query, passage, label) row; ``label`` is 1.0 / 0.0 or a soft label."""

    query: str
    passage: str
    label: float


# ---------------------------------------------------------------------- converters
def groups_to_pointwise(
    groups: Iterable[TrainingGroup], *, use_scores: bool = False
) -> list[PointwiseExample]:
    """Flatten groups into pointwise rows: positives get label 1.0, negatives 0.0.

    Args:
        use_scores: label each row with the group's scores instead, when it has them (for
            soft labels; teacher *logits* are not labels, so this is off by default).

    >>> groups_to_pointwise([TrainingGroup("q", ["p"], ["n"])])
    [PointwiseExample(query='q', passage='p', label=1.0), PointwiseExample(query='q', passage='n', label=0.0)]
    """  # noqa: E501
    rows: list[PointwiseExample] = []
    for group in groups:
        scored = use_scores and group.has_scores
        for i, passage in enumerate(group.positives):
            label = group.positive_scores[i] if scored else 1.0  # type: ignore[index]
            rows.append(PointwiseExample(group.query, passage, float(label)))
        for i, passage in enumerate(group.negatives):
            label = group.negative_scores[i] if scored else 0.0  # type: ignore[index]
            rows.append(PointwiseExample(group.query, passage, float(label)))
    return rows


def dedupe_rows(
    rows: Sequence[PointwiseExample], positions: Sequence[str] | None = None
) -> list[PointwiseExample]:
    """``rows`` with repeats of a (query, passage) pair removed.

    A repeat with the same label is dropped (one warning counts them all); a repeat with another
    label raises ``ValueError`` naming both rows.
    """
    where = positions if positions is not None else [f"examples[{i}]" for i in range(len(rows))]
    first: dict[tuple[str, str], int] = {}
    out: list[PointwiseExample] = []
    repeats: list[tuple[int, int]] = []
    for i, row in enumerate(rows):
        key = (row.query, row.passage)
        j = first.get(key)
        if j is None:
            first[key] = i
            out.append(row)
        elif rows[j].label != row.label:
            raise ValueError(
                f"{where[i]}: the pair (query {row.query!r:.60}, passage {row.passage!r:.60}) "
                f"has label {row.label:g} here but {rows[j].label:g} at {where[j]}; a pair can "
                "have one label only: fix or remove one of the two rows"
            )
        else:
            repeats.append((i, j))
    if repeats:
        i, j = repeats[0]
        logger.warning(
            "%d repeated (query, passage) rows with the same label were kept once "
            "(first: %s repeats %s)",
            len(repeats),
            where[i],
            where[j],
        )
    return out


def groups_from_pointwise(
    examples: Iterable[PointwiseExample],
    *,
    positive_threshold: float = 0.5,
    positions: Sequence[str] | None = None,
) -> list[TrainingGroup]:
    """Group pointwise rows by query (first-appearance order).

    A row with ``label >= positive_threshold`` is a positive. When any label is not 0 or 1, the
    labels are kept as the groups' scores. A (query, passage) pair repeated with the same label
    is kept once (a warning counts the repeats); repeated with another label it is an error.

    Args:
        examples: the rows.
        positive_threshold: the lowest label that is a positive.
        positions: where each row came from (``"train.jsonl:3"``), for messages; default
            ``examples[i]``.

    Raises:
        ValueError: a pair with two different labels (both places are named).

    >>> groups_from_pointwise([PointwiseExample("q", "a", 0.0), PointwiseExample("q", "b", 1.0)])
    [TrainingGroup(query='q', positives=('b',), negatives=('a',), positive_scores=None, negative_scores=None)]
    """  # noqa: E501
    rows = dedupe_rows(list(examples), positions)
    soft = any(r.label not in (0.0, 1.0) for r in rows)
    by_query: dict[str, dict[str, float]] = {}
    for row in rows:
        by_query.setdefault(row.query, {})[row.passage] = float(row.label)
    groups = []
    for query, passages in by_query.items():
        pos = [(p, s) for p, s in passages.items() if s >= positive_threshold]
        neg = [(p, s) for p, s in passages.items() if s < positive_threshold]
        groups.append(
            TrainingGroup(
                query,
                tuple(p for p, _ in pos),
                tuple(p for p, _ in neg),
                tuple(s for _, s in pos) if soft else None,
                tuple(s for _, s in neg) if soft else None,
            )
        )
    return groups
