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

The code is split by job, and this module re-exports the public names of all three parts (so
``from bge_rerank_plugins.finetune.data import load_training_data`` keeps working):
:mod:`~bge_rerank_plugins.finetune.records` (the record types, validators and converters),
:mod:`~bge_rerank_plugins.finetune.formats` (the parsers and format detection) and
:mod:`~bge_rerank_plugins.finetune.sources` (files, BEIR folders, ``load_training_data``).

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

import logging

from .formats import FORMATS, detect_format, from_llama_index_samples, parse_records
from .records import (
    PointwiseExample,
    TrainingGroup,
    check_number,
    check_text,
    dedupe_rows,
    groups_from_pointwise,
    groups_to_pointwise,
)
from .sources import (
    groups_from_beir,
    load_training_data,
    read_training_jsonl,
    samples_from_beir,
    write_training_jsonl,
)

__all__ = [
    "FORMATS",
    "PointwiseExample",
    "TrainingGroup",
    "check_number",
    "check_text",
    "dedupe_rows",
    "detect_format",
    "from_llama_index_samples",
    "groups_from_beir",
    "samples_from_beir",
    "groups_from_pointwise",
    "groups_to_pointwise",
    "load_training_data",
    "parse_records",
    "read_training_jsonl",
    "write_training_jsonl",
]

#: The logger every part of the training data logs to (records, formats, sources).
logger = logging.getLogger(__name__)
