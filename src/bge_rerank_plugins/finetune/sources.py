"""Where training data comes from: files, BEIR-style folders, in-memory records.

:func:`load_training_data` takes any of them and sniffs which one it is:

* a ``.jsonl`` file (one record a line) or a ``.json`` file holding a list of records, of any
  format of :data:`~bge_rerank_plugins.finetune.formats.FORMATS`; files are UTF-8 (a
  byte-order mark is accepted); other encodings are an error naming the file and line;
* a BEIR-style folder with a split: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``
  (+ ``candidates/<split>.jsonl`` for hard negatives), or a loaded ``BeirDataset``
  (:func:`groups_from_beir`: qrels positives plus mined hard negatives);
* an iterable of records (dicts, LlamaIndex samples, ``TrainingGroup`` or ``PointwiseExample``
  objects, a ``datasets.Dataset``).

>>> load_training_data([{"query": "q", "pos_doc": "p", "neg_doc": "n"}])[0].positives
('p',)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..jsonl import decode_utf8, iter_jsonl
from .formats import parse_records
from .records import TrainingGroup

if TYPE_CHECKING:
    from ..beir import BeirDataset
    from .negatives import NegativeMiningConfig

__all__ = [
    "groups_from_beir",
    "load_training_data",
    "read_training_jsonl",
    "samples_from_beir",
    "write_training_jsonl",
]

# The training-data modules all log under the facade's name, so a logging setup keyed on
# ``bge_rerank_plugins.finetune.data`` keeps working after the split.
logger = logging.getLogger("bge_rerank_plugins.finetune.data")


# ---------------------------------------------------------------------- files
def _iter_file(path: Path) -> Iterable[tuple[str, Any]]:
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
def samples_from_beir(
    dataset: BeirDataset | str | os.PathLike[str],
    split: str = "train",
    *,
    negatives_per_positive: int = 4,
    pool: int = 30,
    query_ids: Sequence[str] | None = None,
    template: Any = None,
    relevance_threshold: float = 1,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """LlamaIndex-style samples (``{"query", "context", "score"}``) from a BEIR-style split.

    For each relevant document of a query: the document (score 1.0), and
    ``negatives_per_positive`` documents drawn (seeded) from the query's first-stage top
    ``pool`` candidates that are not relevant (score 0.0), positives listed first: the data a
    LlamaIndex user hands to ``CrossEncoderFinetuneEngine``. The first stage is the split's
    candidates file, or BM25 over the corpus when there is none.

    Example:
        >>> samples = samples_from_beir("../shared/data/scifact", "train")  # doctest: +SKIP
        >>> [sample.get("score") for sample in samples[:2]]  # doctest: +SKIP
        [1.0, 0.0]
    """
    import random

    from ..beir import BeirDataset, load_beir
    from ..fields import as_template

    data = dataset if isinstance(dataset, BeirDataset) else load_beir(dataset, split)
    tpl = as_template(template)
    bm25 = None
    if not data.candidates:  # no candidates file: BM25 over the corpus is the first stage
        from ..bm25 import Bm25Index

        bm25 = Bm25Index.from_corpus(data.corpus, tpl)
    rng = random.Random(seed)
    samples: list[dict[str, Any]] = []
    for qid in query_ids if query_ids is not None else data.query_ids:
        relevant = set(data.relevant(qid, relevance_threshold))
        if bm25 is not None:
            ranked = [d for d, _ in bm25.search(data.queries[qid].text, k=pool)]
        else:
            candidates = data.candidates.get(qid)
            ranked = list(candidates.ids) if candidates is not None else []
        if not relevant or not ranked:
            continue
        others = [d for d in ranked[:pool] if d not in relevant and d in data.corpus]
        positives = sorted(d for d in relevant if d in data.corpus)
        drawn = rng.sample(others, min(len(others), negatives_per_positive * len(positives)))
        query = data.queries[qid].text
        for doc_id, score in [*((d, 1.0) for d in positives), *((d, 0.0) for d in drawn)]:
            samples.append(
                {"query": query, "context": tpl.render(data.corpus[doc_id]), "score": score}
            )
    return samples


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
    from ..fields import as_template
    from .negatives import NegativeMiningConfig, mine_hard_negatives

    data = dataset if isinstance(dataset, BeirDataset) else load_beir(dataset, split)
    config = negatives or NegativeMiningConfig()
    tpl = as_template(template)
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
