"""The training-data record formats: one parser per format, format detection.

The formats and their fields are listed in :mod:`bge_rerank_plugins.finetune.data`, the
public facade over this module.

:func:`parse_records` reads ``(where, record)`` pairs of one format (``format="auto"``: the
first record decides, :func:`detect_format`) into groups. A malformed record raises a
``ValueError`` naming ``where`` (the file and line, or ``records[i]``) and the field; no record
is skipped silently:

* a passage that is both a positive and a negative of one query in grouped records (mined
  negatives that contain a positive) is kept as a positive only, with a warning that counts
  them;
* two different teacher scores for one (query, passage) pair are an error naming both places;
* triplets of one query are merged into one group.

>>> parse_records([("records[0]", {"query": "q", "pos_doc": "p", "neg_doc": "n"})])
[TrainingGroup(query='q', positives=('p',), negatives=('n',), positive_scores=None, negative_scores=None)]
"""  # noqa: E501

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .records import (
    PointwiseExample,
    TrainingGroup,
    check_number,
    check_text,
    dedupe_rows,
    groups_from_pointwise,
)

__all__ = ["FORMATS", "detect_format", "from_llama_index_samples", "parse_records"]

# The training-data modules all log under the facade's name, so a logging setup keyed on
# ``bge_rerank_plugins.finetune.data`` keeps working after the split.
logger = logging.getLogger("bge_rerank_plugins.finetune.data")

#: The record formats :func:`parse_records` understands.
FORMATS = ("llama_index", "pointwise", "triplet", "flag", "group")


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
    return dedupe_rows(rows, positions)


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
    return [check_text(v, f"{where}: field {name!r}[{i}]") for i, v in enumerate(value)]


def _positive_list(record: Mapping[str, Any], name: str, where: str) -> list[str]:
    """The required, non-empty list of positive passages of a grouped record."""
    positives = _text_list(record, name, where, required=True)
    if not positives:
        raise ValueError(f"{where}: field {name!r} is empty; each query needs a positive passage")
    return positives


def _parse_llama_index(record: Mapping[str, Any], where: str) -> PointwiseExample:
    query = check_text(_get(record, "query", where), f"{where}: field 'query'")
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
    context = check_text(context, f"{where}: field 'context'")
    score = check_number(_get(record, "score", where), f"{where}: field 'score'")
    return PointwiseExample(query, context, score)


def _parse_pointwise(record: Mapping[str, Any], where: str) -> PointwiseExample:
    query = check_text(_get(record, "query", where), f"{where}: field 'query'")
    passage = check_text(_get(record, "passage", where), f"{where}: field 'passage'")
    label = check_number(_get(record, "score", where, "label"), f"{where}: field 'score'")
    return PointwiseExample(query, passage, label)


def _parse_triplet(record: Mapping[str, Any], where: str) -> TrainingGroup:
    query = check_text(_get(record, "query", where), f"{where}: field 'query'")
    pos = check_text(_get(record, "pos_doc", where), f"{where}: field 'pos_doc'")
    neg = check_text(_get(record, "neg_doc", where), f"{where}: field 'neg_doc'")
    return TrainingGroup(query, (pos,), (neg,))


def _parse_flag(record: Mapping[str, Any], where: str) -> TrainingGroup:
    query = check_text(_get(record, "query", where), f"{where}: field 'query'")
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
        values = tuple(check_number(v, f"{where}: field {name!r}[{i}]") for i, v in enumerate(raw))
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
    query = check_text(_get(record, "query", where), f"{where}: field 'query'")
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
