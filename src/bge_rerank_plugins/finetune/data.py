"""Training data for cross-encoder fine-tuning: many input formats, one record type.

Every format is read into :class:`TrainingGroup` (a query, its positive passages, its negative
passages, optional teacher scores); :class:`PointwiseExample` is the (query, passage, label)
view for pointwise losses. Accepted inputs (``load_training_data`` sniffs which one):

==========================  ===========================================================
format                      record
==========================  ===========================================================
``llama_index``             ``{"query", "context", "score"}`` or LlamaIndex's
                            ``CrossEncoderFinetuningDatasetSample`` objects
``pointwise``               ``{"query", "passage", "score"}`` (``"label"`` also accepted)
``triplet``                 ``{"query", "pos_doc", "neg_doc"}``
``flag``                    FlagEmbedding JSONL ``{"query", "pos": [..], "neg": [..],
                            "pos_scores"?: [..], "neg_scores"?: [..]}``
``group``                   :class:`TrainingGroup` spelled as a dict: ``{"query",
                            "positives": [..], "negatives"?: [..], "positive_scores"?,
                            "negative_scores"?}``
BEIR folder + split         ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``
                            (+ ``candidates/<split>.jsonl`` for hard negatives)
==========================  ===========================================================

Pointwise rows and triplets are grouped by query (first-appearance order): a row whose label
is >= ``positive_threshold`` (0.5) is a positive. Labels other than 0 and 1 (soft or graded
labels) are kept as the group's scores. A malformed row raises a ``ValueError`` naming the file
(or ``records``), the line (or index) and the field; no row is skipped silently:

* labels and teacher scores must be finite numbers (``NaN`` and ``Infinity`` are errors);
* a (query, passage) pair given twice with two different labels, or two different teacher
  scores, is an error naming both places (which one is right cannot be guessed);
* a pointwise row repeated with the same label is kept once, with a warning that counts them;
* a passage that is both a positive and a negative of one query in grouped records (mined
  negatives that contain a positive) is kept as a positive only, with a warning that counts
  them;
* files are UTF-8 (a byte-order mark is accepted); other encodings are an error naming the
  file and line.

>>> groups = load_training_data([
...     {"query": "q1", "passage": "good", "score": 1},
...     {"query": "q1", "passage": "bad", "score": 0},
... ])
>>> groups
[TrainingGroup(query='q1', positives=('good',), negatives=('bad',), positive_scores=None, negative_scores=None)]
>>> groups_to_pointwise(groups)[1]
PointwiseExample(query='q1', passage='bad', label=0.0)
"""  # noqa: E501

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..beir import BeirDataset
    from .negatives import NegativeMiningConfig

__all__ = [
    "FORMATS",
    "PointwiseExample",
    "TrainingGroup",
    "detect_format",
    "from_llama_index_samples",
    "groups_from_beir",
    "groups_from_pointwise",
    "groups_to_pointwise",
    "load_training_data",
    "parse_records",
    "read_training_jsonl",
    "write_training_jsonl",
]

logger = logging.getLogger(__name__)

#: The record formats :func:`parse_records` understands.
FORMATS = ("llama_index", "pointwise", "triplet", "flag", "group")


def _check_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__} {value!r:.60}")
    if not value.strip():
        raise ValueError(f"{where} is empty")
    return value


def _check_number(value: Any, where: str) -> float:
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
        _check_text(self.query, "TrainingGroup.query")
        for name in ("positives", "negatives"):
            values = getattr(self, name)
            if isinstance(values, str):
                raise ValueError(f"TrainingGroup.{name} must be a list of strings, got one string")
            values = tuple(values)
            for i, value in enumerate(values):
                _check_text(value, f"TrainingGroup.{name}[{i}]")
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
                _check_number(s, f"TrainingGroup.{name}[{i}]") for i, s in enumerate(scores)
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


def _dedupe_rows(
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
    rows = _dedupe_rows(list(examples), positions)
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


def from_llama_index_samples(
    samples: Iterable[Any], *, name: str = "samples"
) -> list[PointwiseExample]:
    """LlamaIndex ``CrossEncoderFinetuningDatasetSample`` objects (or dicts with ``query``,
    ``context``, ``score``) as pointwise rows, each keeping its own score as the label.

    Every sample is validated (non-empty texts, a finite score); a (query, context) pair given
    twice is kept once (a warning counts the repeats), or is an error when the two scores differ.

    Args:
        samples: the samples.
        name: what errors call the samples (``"samples[3]: field 'score' ..."``).

    >>> from types import SimpleNamespace
    >>> from_llama_index_samples([SimpleNamespace(query="q", context="c", score=1)])
    [PointwiseExample(query='q', passage='c', label=1.0)]
    """
    positions: list[str] = []
    rows: list[PointwiseExample] = []
    for i, sample in enumerate(samples):
        where = f"{name}[{i}]"
        positions.append(where)
        rows.append(_parse_llama_index(_as_mapping(sample, where), where))
    return _dedupe_rows(rows, positions)


# ---------------------------------------------------------------------- record parsing
def _as_mapping(record: Any, where: str) -> Mapping[str, Any]:
    if isinstance(record, Mapping):
        return record
    if hasattr(record, "model_dump") and callable(record.model_dump):  # pydantic objects
        return record.model_dump()
    if hasattr(record, "__dict__"):
        return {k: v for k, v in vars(record).items() if not k.startswith("_")}
    raise ValueError(
        f"{where}: expected a record (a dict or an object), got {type(record).__name__}"
    )


def _get(record: Mapping[str, Any], name: str, where: str, *alternatives: str) -> Any:
    keys = (name, *alternatives)
    for key in keys:
        if key in record and record[key] is not None:
            return record[key]
    null = [k for k in keys if k in record]
    if null:
        raise ValueError(f"{where}: field {null[0]!r} is null; give a value")
    names = " or ".join(repr(k) for k in keys)
    raise ValueError(f"{where}: missing field {names} (fields present: {sorted(record)})")


def _text_list(record: Mapping[str, Any], name: str, where: str, required: bool) -> list[str]:
    if name not in record or record[name] is None:
        if required and name in record:
            raise ValueError(f"{where}: field {name!r} is null; give a list of strings")
        if required:
            raise ValueError(f"{where}: missing field {name!r} (fields present: {sorted(record)})")
        return []
    value = record[name]
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(
            f"{where}: field {name!r} must be a list of strings, got {type(value).__name__}"
        )
    return [_check_text(v, f"{where}: field {name!r}[{i}]") for i, v in enumerate(value)]


def _positive_list(record: Mapping[str, Any], name: str, where: str) -> list[str]:
    """The required, non-empty list of positive passages of a grouped record."""
    positives = _text_list(record, name, where, required=True)
    if not positives:
        raise ValueError(f"{where}: field {name!r} is empty; each query needs a positive passage")
    return positives


def _parse_llama_index(record: Mapping[str, Any], where: str) -> PointwiseExample:
    query = _check_text(_get(record, "query", where), f"{where}: field 'query'")
    context = _get(record, "context", where)
    if not isinstance(context, str):  # a node or document object: its text
        inner = next(
            (
                getattr(context, attr, None)
                for attr in ("text", "page_content")
                if isinstance(getattr(context, attr, None), str)
            ),
            None,
        )
        context = inner if inner is not None else context
    context = _check_text(context, f"{where}: field 'context'")
    score = _check_number(_get(record, "score", where), f"{where}: field 'score'")
    return PointwiseExample(query, context, score)


def _parse_pointwise(record: Mapping[str, Any], where: str) -> PointwiseExample:
    query = _check_text(_get(record, "query", where), f"{where}: field 'query'")
    passage = _check_text(_get(record, "passage", where), f"{where}: field 'passage'")
    label = _check_number(_get(record, "score", where, "label"), f"{where}: field 'score'")
    return PointwiseExample(query, passage, label)


def _parse_triplet(record: Mapping[str, Any], where: str) -> TrainingGroup:
    query = _check_text(_get(record, "query", where), f"{where}: field 'query'")
    pos = _check_text(_get(record, "pos_doc", where), f"{where}: field 'pos_doc'")
    neg = _check_text(_get(record, "neg_doc", where), f"{where}: field 'neg_doc'")
    return TrainingGroup(query, (pos,), (neg,))


def _parse_flag(record: Mapping[str, Any], where: str) -> TrainingGroup:
    query = _check_text(_get(record, "query", where), f"{where}: field 'query'")
    pos = _positive_list(record, "pos", where)
    neg = _text_list(record, "neg", where, required=False)
    scores: list[tuple[float, ...] | None] = []
    for name, texts in (("pos_scores", pos), ("neg_scores", neg)):
        raw = record.get(name)
        if raw is None:
            scores.append(None)
            continue
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
            raise ValueError(f"{where}: field {name!r} must be a list of numbers")
        values = tuple(_check_number(v, f"{where}: field {name!r}[{i}]") for i, v in enumerate(raw))
        if len(values) != len(texts):
            raise ValueError(
                f"{where}: field {name!r} has {len(values)} values for {len(texts)} passages"
            )
        scores.append(values)
    if (scores[0] is None) != (scores[1] is None):
        given, missing = (
            ("pos_scores", "neg_scores") if scores[1] is None else ("neg_scores", "pos_scores")
        )
        if missing == "neg_scores" and not neg:
            scores[1] = ()
        else:
            raise ValueError(f"{where}: field {given!r} is given but {missing!r} is missing")
    return TrainingGroup(query, tuple(pos), tuple(neg), scores[0], scores[1])


def _parse_group(record: Mapping[str, Any], where: str) -> TrainingGroup:
    query = _check_text(_get(record, "query", where), f"{where}: field 'query'")
    positives = _positive_list(record, "positives", where)
    negatives = _text_list(record, "negatives", where, required=False)
    try:
        return TrainingGroup(
            query,
            tuple(positives),
            tuple(negatives),
            record.get("positive_scores"),
            record.get("negative_scores"),
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


_PARSERS = {
    "llama_index": _parse_llama_index,
    "pointwise": _parse_pointwise,
    "triplet": _parse_triplet,
    "flag": _parse_flag,
    "group": _parse_group,
}


def detect_format(record: Any) -> str:
    """The format of one record (see :data:`FORMATS`), from its field names.

    >>> detect_format({"query": "q", "pos": ["p"], "neg": []})
    'flag'
    """
    if isinstance(record, (TrainingGroup, PointwiseExample)):
        return type(record).__name__
    fields = set(_as_mapping(record, "record"))
    if "pos" in fields:
        return "flag"
    if "positives" in fields:
        return "group"
    if "pos_doc" in fields or "neg_doc" in fields:
        return "triplet"
    if "passage" in fields:
        return "pointwise"
    if "context" in fields:
        return "llama_index"
    raise ValueError(
        f"cannot tell the format of a record with fields {sorted(fields)}: expected "
        "{'query','context','score'} (LlamaIndex), {'query','passage','score'} (pointwise), "
        "{'query','pos_doc','neg_doc'} (triplet), {'query','pos','neg'} (FlagEmbedding) or "
        "{'query','positives','negatives'} (TrainingGroup fields)"
    )


def parse_records(
    records: Iterable[tuple[str, Any]],
    *,
    format: str = "auto",
    positive_threshold: float = 0.5,
) -> list[TrainingGroup]:
    """Parse ``(where, record)`` pairs of one format into groups.

    ``where`` names the record in errors (``"train.jsonl:12"``). With ``format="auto"`` the
    first record decides the format and every other record must match it.
    """
    if format != "auto" and format not in _PARSERS:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    chosen = None if format == "auto" else format
    grouped: list[tuple[str, TrainingGroup]] = []
    pointwise: list[PointwiseExample] = []
    positions: list[str] = []
    for where, record in records:
        if isinstance(record, TrainingGroup):
            grouped.append((where, record))
            continue
        if isinstance(record, PointwiseExample):
            pointwise.append(record)
            positions.append(where)
            continue
        mapping = _as_mapping(record, where)
        if chosen is None:
            try:
                chosen = detect_format(mapping)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
        parsed = _PARSERS[chosen](mapping, where)
        if isinstance(parsed, PointwiseExample):
            pointwise.append(parsed)
            positions.append(where)
        else:
            grouped.append((where, parsed))
    groups = _drop_contradictions(grouped)
    if chosen == "triplet":
        groups = _merge_groups(groups)
    if pointwise:
        groups.extend(
            groups_from_pointwise(
                pointwise, positive_threshold=positive_threshold, positions=positions
            )
        )
    return groups


def _drop_contradictions(items: Sequence[tuple[str, TrainingGroup]]) -> list[TrainingGroup]:
    """The groups, each negative that is also a positive of its query removed (with a warning).

    Mined negatives often contain a labelled positive; the label is the explicit judgement, so
    the passage stays a positive. Two different teacher scores for one (query, passage) pair
    raise ``ValueError`` naming both records.
    """
    positives: dict[str, set[str]] = {}
    scores: dict[tuple[str, str], tuple[float, str]] = {}
    for where, group in items:
        positives.setdefault(group.query, set()).update(group.positives)
        if not group.has_scores:
            continue
        texts = (*group.positives, *group.negatives)
        values = (*(group.positive_scores or ()), *(group.negative_scores or ()))
        for text, score in zip(texts, values):
            first = scores.setdefault((group.query, text), (score, where))
            if not math.isclose(first[0], score, rel_tol=1e-4, abs_tol=1e-6):
                raise ValueError(
                    f"{where}: passage {text!r:.60} of query {group.query!r:.60} has teacher "
                    f"score {score:g} here but {first[0]:g} at {first[1]}; a pair can have one "
                    "teacher score only: fix or remove one of them"
                )
    out: list[TrainingGroup] = []
    dropped: list[str] = []
    for where, group in items:
        own = positives[group.query]
        keep = [i for i, text in enumerate(group.negatives) if text not in own]
        if len(keep) < len(group.negatives):
            dropped += [where] * (len(group.negatives) - len(keep))
            negative_scores = group.negative_scores
            group = TrainingGroup(
                group.query,
                group.positives,
                tuple(group.negatives[i] for i in keep),
                group.positive_scores,
                None if negative_scores is None else tuple(negative_scores[i] for i in keep),
            )
        out.append(group)
    if dropped:
        logger.warning(
            "%d negatives that are also a positive of the same query were removed from the "
            "negatives (kept as positives; first at %s)",
            len(dropped),
            dropped[0],
        )
    return out


def _merge_groups(groups: Sequence[TrainingGroup]) -> list[TrainingGroup]:
    """Merge groups of the same query (triplets), keeping first-appearance order."""
    merged: dict[str, tuple[dict[str, None], dict[str, None]]] = {}
    for group in groups:
        pos, neg = merged.setdefault(group.query, ({}, {}))
        pos.update(dict.fromkeys(group.positives))
        neg.update(dict.fromkeys(group.negatives))
    return [TrainingGroup(q, tuple(p), tuple(n)) for q, (p, n) in merged.items()]


# ---------------------------------------------------------------------- files
def _iter_file(path: Path) -> Iterable[tuple[str, Any]]:
    from ..beir import decode_utf8, iter_jsonl

    if path.suffix == ".json":
        try:
            data = json.loads(decode_utf8(path.read_bytes(), path))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json training file must hold a list of records")
        for i, record in enumerate(data):
            yield f"{path}[{i}]", record
        return
    for number, record in iter_jsonl(path):
        yield f"{path}:{number}", record


def read_training_jsonl(
    path: str | os.PathLike[str], *, format: str = "auto", positive_threshold: float = 0.5
) -> list[TrainingGroup]:
    """Read a JSON-lines (or ``.json`` list) training file of any supported format."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"training file {str(file)!r} does not exist")
    groups = parse_records(_iter_file(file), format=format, positive_threshold=positive_threshold)
    if not groups:
        raise ValueError(f"{file}: no training records")
    return groups


def write_training_jsonl(groups: Iterable[TrainingGroup], path: str | os.PathLike[str]) -> Path:
    """Write groups as FlagEmbedding JSONL (``query``, ``pos``, ``neg``, scores if any)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for group in groups:
            handle.write(json.dumps(group.to_dict(), ensure_ascii=False) + "\n")
    return out


# ---------------------------------------------------------------------- BEIR
def groups_from_beir(
    dataset: BeirDataset | str | os.PathLike[str],
    split: str = "train",
    *,
    negatives: NegativeMiningConfig | None = None,
    template: Any = None,
    relevance_threshold: float = 1,
    max_queries: int | None = None,
) -> list[TrainingGroup]:
    """Training groups from a BEIR-style split: qrels positives plus mined hard negatives.

    Args:
        dataset: a loaded :class:`~bge_rerank_plugins.beir.BeirDataset` or a folder.
        split: the qrels split, when ``dataset`` is a folder.
        negatives: how to mine negatives (default :class:`NegativeMiningConfig()`: the
            candidates file's BM25 lists when present, else BM25 over the corpus).
        template: how documents become text (default ``title`` + newline + ``text``).
        relevance_threshold: the lowest grade that is a positive; documents at or above it are
            never negatives.
        max_queries: only the first this many queries (qrels order) with a positive.

    Queries without a positive document (none graded >= ``relevance_threshold``, or none of
    them in the corpus) cannot be trained on: they are left out with a warning that counts
    them and names the first few.
    """
    from ..beir import BeirDataset, load_beir
    from ..fields import PassageTemplate
    from .negatives import NegativeMiningConfig, mine_hard_negatives

    data = dataset if isinstance(dataset, BeirDataset) else load_beir(dataset, split)
    config = negatives or NegativeMiningConfig()
    tpl = (
        template
        if isinstance(template, PassageTemplate)
        else PassageTemplate(template or ("title", "text"))
    )
    qids = [q for q in data.query_ids if data.relevant(q, relevance_threshold)]
    skipped = [q for q in data.query_ids if not data.relevant(q, relevance_threshold)]
    if max_queries is not None:
        qids = qids[:max_queries]
    mined = mine_hard_negatives(
        data, config, query_ids=qids, relevance_threshold=relevance_threshold, template=tpl
    )
    groups = []
    for qid in qids:
        grades = data.qrels[qid]
        pos_ids = [d for d, g in grades.items() if g >= relevance_threshold and d in data.corpus]
        if not pos_ids:
            skipped.append(qid)
            continue
        groups.append(
            TrainingGroup(
                data.queries[qid].text,
                tuple(tpl.render(data.corpus[d]) for d in pos_ids),
                tuple(tpl.render(data.corpus[d]) for d in mined.get(qid, [])),
            )
        )
    if skipped:
        logger.warning(
            "%s/%s: %d of %d queries have no positive document (grade >= %s in the corpus) and "
            "are left out of training (first: %s)",
            data.path,
            data.split,
            len(skipped),
            len(data.query_ids),
            relevance_threshold,
            ", ".join(repr(q) for q in skipped[:5]),
        )
    return groups


def load_training_data(
    source: Any,
    *,
    split: str | None = None,
    format: str = "auto",
    positive_threshold: float = 0.5,
    negatives: NegativeMiningConfig | None = None,
    template: Any = None,
    relevance_threshold: float = 1,
    name: str = "records",
) -> list[TrainingGroup]:
    """Read training data from any supported source into :class:`TrainingGroup` records.

    Args:
        source: a ``.jsonl`` / ``.json`` file, a BEIR-style folder (with ``split``), a loaded
            ``BeirDataset``, or an iterable of records (dicts, LlamaIndex samples,
            ``TrainingGroup`` or ``PointwiseExample`` objects, a ``datasets.Dataset``).
        split: the qrels split of a BEIR folder (required for folders).
        format: ``"auto"`` or one of :data:`FORMATS` (files and records).
        positive_threshold: the lowest pointwise label that counts as a positive.
        negatives, template, relevance_threshold: for BEIR sources, see
            :func:`groups_from_beir`.
        name: what errors call an iterable source (``"records[3]: missing field 'query'"``).

    Raises:
        ValueError: a malformed record (file and line, or index, and the field are named).

    >>> load_training_data([{"query": "q", "pos_doc": "p", "neg_doc": "n"}])[0].negatives
    ('n',)
    """
    from ..beir import BeirDataset

    if isinstance(source, BeirDataset):
        return groups_from_beir(
            source,
            negatives=negatives,
            template=template,
            relevance_threshold=relevance_threshold,
        )
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            if split is None:
                from ..beir import available_splits

                raise ValueError(
                    f"source {str(path)!r} is a BEIR-style folder: pass split= (one of "
                    f"{available_splits(path) or 'no qrels/*.tsv found'})"
                )
            return groups_from_beir(
                path,
                split,
                negatives=negatives,
                template=template,
                relevance_threshold=relevance_threshold,
            )
        return read_training_jsonl(path, format=format, positive_threshold=positive_threshold)
    if isinstance(source, (bytes, Mapping)) or not isinstance(source, Iterable):
        raise TypeError(
            f"source must be a file path, a BEIR folder or an iterable of records, got "
            f"{type(source).__name__}"
        )
    groups = parse_records(
        ((f"{name}[{i}]", r) for i, r in enumerate(source)),
        format=format,
        positive_threshold=positive_threshold,
    )
    if not groups:
        raise ValueError(f"{name} holds no training records")
    return groups
