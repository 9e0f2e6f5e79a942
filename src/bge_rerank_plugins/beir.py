"""Read and write BEIR-style dataset folders as small typed records.

Layout of a folder (as in BEIR, plus optional first-stage candidate lists)::

    corpus.jsonl              {"_id": str, "title": str, "text": str, ...extra fields}
    queries.jsonl             {"_id": str, "text": str}
    qrels/<split>.tsv         header "query-id<TAB>corpus-id<TAB>score"; graded or binary
    candidates/<split>.jsonl  {"qid", "pos": [ids], "neg": [ids], "scores": {id: grade},
                               "ranked": [ids] in first-stage (BM25) order, optional}

A document without a qrels row for a query is not relevant to it (grade 0). Every error names
the file, the 1-based line number and the field at fault.

BM25 lives in :mod:`bge_rerank_plugins.bm25` and the UTF-8 / JSON-lines readers in
:mod:`bge_rerank_plugins.jsonl`; their names are re-exported here, so
``from bge_rerank_plugins.beir import Bm25Index, iter_jsonl`` keeps working.

>>> from bge_rerank_plugins.beir import load_beir  # doctest: +SKIP
>>> ds = load_beir("data/scifact", "dev")  # doctest: +SKIP
>>> ds.query_ids[:2], ds.qrels["2"]  # doctest: +SKIP
(['2', '4'], {'13734012': 1})
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bm25 import Bm25Index, bm25_tokenize
from .jsonl import PathLike, decode_utf8, iter_jsonl, iter_lines, require_field

__all__ = [
    "BeirDataset",
    "Bm25Index",
    "CandidateList",
    "Document",
    "Query",
    "available_splits",
    "bm25_tokenize",
    "decode_utf8",
    "iter_jsonl",
    "iter_lines",
    "load_beir",
    "load_candidates",
    "load_corpus",
    "load_qrels",
    "load_queries",
    "write_beir",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    """One corpus document; ``metadata`` holds the extra fields (``author``, ``bib``, ...).

    A ``Document`` is a record for :class:`~bge_rerank_plugins.fields.PassageTemplate`, so
    ``PassageTemplate("{title}\\n{text}\\n{author}").render(doc)`` works on it.
    """

    id: str
    title: str = ""
    text: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Query:
    """One query."""

    id: str
    text: str


@dataclass(frozen=True)
class CandidateList:
    """The first-stage candidates of one query.

    Attributes:
        qid: the query id.
        pos, neg: judged positive / negative candidate ids, as in the file.
        scores: relevance grade of each candidate that has one.
        ranked: the candidate ids in first-stage (e.g. BM25) order, or ``None`` when the file
            gives no order (judged lists).
    """

    qid: str
    pos: tuple[str, ...] = ()
    neg: tuple[str, ...] = ()
    scores: Mapping[str, float] = field(default_factory=dict)
    ranked: tuple[str, ...] | None = None

    @property
    def ids(self) -> tuple[str, ...]:
        """All candidate ids: ``ranked`` when given, else ``pos`` then ``neg`` (no duplicates)."""
        if self.ranked is not None:
            return self.ranked
        return tuple(dict.fromkeys((*self.pos, *self.neg)))


@dataclass
class BeirDataset:
    """A BEIR-style folder loaded for one split.

    Attributes:
        path: the folder.
        split: the split name (``"dev"``, ``"train"``, ``"all"``...).
        corpus: document id -> :class:`Document`.
        queries: query id -> :class:`Query` (only the split's queries).
        qrels: query id -> {document id: grade}; documents not listed have grade 0.
        candidates: query id -> :class:`CandidateList`, or ``None`` without a candidates file.
    """

    path: Path
    split: str
    corpus: dict[str, Document]
    queries: dict[str, Query]
    qrels: dict[str, dict[str, float]]
    candidates: dict[str, CandidateList] | None = None

    @property
    def query_ids(self) -> list[str]:
        """The split's query ids, in qrels file order (the order evaluation uses)."""
        return [qid for qid in self.qrels if qid in self.queries]

    def relevant(self, qid: str, threshold: float = 1) -> set[str]:
        """Ids of the documents with grade >= ``threshold`` for ``qid``."""
        return {d for d, g in self.qrels.get(qid, {}).items() if g >= threshold}


# ---------------------------------------------------------------------- field readers
def _id(row: Mapping[str, Any], name: str, where: str) -> str:
    value = require_field(row, name, (str, int), where)
    text = str(value)
    if not text.strip():
        raise ValueError(f"{where}: field {name!r} is empty")
    return text


def _id_list(row: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    values = require_field(row, name, list, where)
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ValueError(
                f"{where}: field {name!r}[{i}] must be a document id (str), "
                f"got {type(value).__name__}"
            )
        out.append(str(value))
    return tuple(out)


def load_corpus(path: PathLike) -> dict[str, Document]:
    """Read ``corpus.jsonl``: ``{"_id", "title"?, "text", ...}`` per line.

    ``title`` may be missing or null (read as ``""``); other fields go to ``metadata``.
    """
    corpus: dict[str, Document] = {}
    for number, row in iter_jsonl(path):
        where = f"{path}:{number}"
        doc_id = _id(row, "_id", where)
        text = require_field(row, "text", str, where)
        title = row.get("title") or ""
        if not isinstance(title, str):
            raise ValueError(f"{where}: field 'title' must be str, got {type(title).__name__}")
        if doc_id in corpus:
            raise ValueError(f"{where}: duplicate document id {doc_id!r} in field '_id'")
        extra = {k: v for k, v in row.items() if k not in ("_id", "title", "text")}
        corpus[doc_id] = Document(doc_id, title, text, extra)
    return corpus


def load_queries(path: PathLike, ids: set[str] | None = None) -> dict[str, Query]:
    """Read ``queries.jsonl`` (``{"_id", "text"}``); keep only ``ids`` when given.

    Raises:
        ValueError: a malformed line, or a query id given twice (as for document ids: which
            text is right cannot be guessed), with file and line.
    """
    queries: dict[str, Query] = {}
    seen: dict[str, int] = {}
    for number, row in iter_jsonl(path):
        where = f"{path}:{number}"
        qid = _id(row, "_id", where)
        if qid in seen:
            raise ValueError(
                f"{where}: duplicate query id {qid!r} in field '_id' (first on line "
                f"{seen[qid]}); which text is meant cannot be guessed: remove one of the lines"
            )
        seen[qid] = number
        if ids is not None and qid not in ids:
            continue
        text = require_field(row, "text", str, where)
        if not text.strip():
            raise ValueError(f"{where}: field 'text' is empty for query {qid!r}")
        queries[qid] = Query(qid, text)
    return queries


def load_qrels(path: PathLike) -> dict[str, dict[str, float]]:
    """Read ``qrels/<split>.tsv`` into ``{query_id: {doc_id: grade}}``.

    The header line (``query-id  corpus-id  score``) is optional. Grades are finite numbers
    (ints are kept as ints); a repeated (query, doc) pair keeps the last grade, with a warning.
    The file is UTF-8 (a leading byte-order mark is accepted).
    """
    path = Path(path)
    qrels: dict[str, dict[str, float]] = {}
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if number == 1 and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue
        where = f"{path}:{number}"
        if len(parts) != 3:
            raise ValueError(
                f"{where}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                f"got {len(parts)}"
            )
        qid, doc_id, raw = (p.strip() for p in parts)
        if not qid or not doc_id:
            name = "query-id" if not qid else "corpus-id"
            raise ValueError(f"{where}: column {name!r} is empty")
        try:
            grade: float = int(raw)
        except ValueError:
            try:
                grade = float(raw)
            except ValueError:
                raise ValueError(f"{where}: column 'score' must be a number, got {raw!r}") from None
        if not math.isfinite(grade):
            raise ValueError(f"{where}: column 'score' must be a finite number, got {raw!r}")
        per_query = qrels.setdefault(qid, {})
        if doc_id in per_query and per_query[doc_id] != grade:
            logger.warning("%s: (%s, %s) is graded twice; keeping %s", where, qid, doc_id, grade)
        per_query[doc_id] = grade
    return qrels


def load_candidates(path: PathLike) -> dict[str, CandidateList]:
    """Read ``candidates/<split>.jsonl`` (``{"qid", "pos", "neg", "scores"?, "ranked"?}``)."""
    out: dict[str, CandidateList] = {}
    for number, row in iter_jsonl(path):
        where = f"{path}:{number}"
        qid = _id(row, "qid", where)
        pos = _id_list(row, "pos", where) if "pos" in row else ()
        neg = _id_list(row, "neg", where) if "neg" in row else ()
        ranked = _id_list(row, "ranked", where) if row.get("ranked") is not None else None
        scores_raw = row.get("scores") or {}
        if not isinstance(scores_raw, dict):
            raise ValueError(f"{where}: field 'scores' must be an object {{id: grade}}")
        scores: dict[str, float] = {}
        for doc_id, grade in scores_raw.items():
            if not isinstance(grade, (int, float)) or isinstance(grade, bool):
                raise ValueError(f"{where}: field 'scores'[{doc_id!r}] must be a number")
            if not math.isfinite(grade):
                raise ValueError(
                    f"{where}: field 'scores'[{doc_id!r}] must be a finite number, got {grade!r}"
                )
            scores[str(doc_id)] = grade
        if ranked is None and not pos and not neg:
            raise ValueError(
                f"{where}: query {qid!r} has no candidates (fields 'pos', 'neg', 'ranked')"
            )
        if qid in out:
            raise ValueError(f"{where}: duplicate query id {qid!r} in field 'qid'")
        out[qid] = CandidateList(qid, pos, neg, scores, ranked)
    return out


def available_splits(folder: PathLike) -> list[str]:
    """The split names that have a ``qrels/<split>.tsv`` in ``folder``."""
    return sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))


def load_beir(
    folder: PathLike,
    split: str,
    *,
    candidates: bool = True,
    corpus: Mapping[str, Document] | None = None,
) -> BeirDataset:
    """Load one split of a BEIR-style folder.

    Args:
        folder: the dataset folder (holding ``corpus.jsonl``, ``queries.jsonl``, ``qrels/``).
        split: name of a ``qrels/<split>.tsv`` file.
        candidates: also read ``candidates/<split>.jsonl`` when it exists.
        corpus: an already loaded corpus to reuse (e.g. for a second split).

    Raises:
        FileNotFoundError: the folder, a required file or the split does not exist (the
            message lists the available splits).
        ValueError: a malformed line (file, line number and field are named).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise FileNotFoundError(
            f"split {split!r}: {qrels_path} not found; available splits: "
            f"{available_splits(root) or 'none'}"
        )
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} not found: not a BEIR-style folder")
    qrels = load_qrels(qrels_path)
    docs = dict(corpus) if corpus is not None else load_corpus(root / "corpus.jsonl")
    cand_path = root / "candidates" / f"{split}.jsonl"
    cands = load_candidates(cand_path) if candidates and cand_path.is_file() else None
    wanted = set(qrels) | set(cands or {})
    queries = load_queries(root / "queries.jsonl", ids=wanted)
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise ValueError(
            f"{qrels_path}: {len(missing)} query ids have no entry in queries.jsonl "
            f"(first: {missing[0]!r})"
        )
    unknown = [(q, d) for q, per in qrels.items() for d in per if d not in docs]
    if unknown:
        logger.warning(
            "%s: %d judged documents are not in the corpus (first: %s/%s); they count as "
            "relevant documents that can never be retrieved",
            qrels_path,
            len(unknown),
            *unknown[0],
        )
    if cands is not None:
        for cand in cands.values():
            for doc_id in cand.ids:
                if doc_id not in docs:
                    raise ValueError(
                        f"{cand_path}: query {cand.qid!r} names candidate {doc_id!r}, which is "
                        "not in corpus.jsonl"
                    )
    return BeirDataset(root, split, docs, queries, qrels, cands)


def write_beir(
    folder: PathLike,
    *,
    corpus: Mapping[str, Mapping[str, Any]],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, Mapping[str, float]]],
    candidates: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Path:
    """Write a BEIR-style folder (for tests, examples and exported splits).

    Args:
        folder: destination (created).
        corpus: ``{doc_id: {"title": .., "text": .., ...}}``.
        queries: ``{query_id: text}``.
        qrels: ``{split: {query_id: {doc_id: grade}}}``.
        candidates: ``{split: [{"qid", "pos", "neg", "scores"?, "ranked"?}, ...]}``.

    >>> write_beir("tiny", corpus={"d1": {"title": "T", "text": "x"}}, queries={"q1": "x?"},
    ...            qrels={"test": {"q1": {"d1": 1}}})  # doctest: +SKIP
    PosixPath('tiny')
    """
    root = Path(folder)
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    with (root / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for doc_id, doc in corpus.items():
            handle.write(json.dumps({"_id": doc_id, **doc}, ensure_ascii=False) + "\n")
    with (root / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for qid, text in queries.items():
            handle.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    for split, per_query in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"]
        lines += [f"{q}\t{d}\t{g}" for q, docs in per_query.items() for d, g in docs.items()]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split, rows in (candidates or {}).items():
        (root / "candidates").mkdir(exist_ok=True)
        with (root / "candidates" / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
    return root
