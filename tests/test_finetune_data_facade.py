"""``finetune.data`` stays the one import path after its split into records/formats/sources."""

from __future__ import annotations

import importlib
import logging

import pytest

from bge_rerank_plugins.finetune import data

#: The public names of ``finetune.data`` before the split (issue 20).
NAMES_BEFORE_THE_SPLIT = [
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


@pytest.mark.parametrize("name", NAMES_BEFORE_THE_SPLIT)
def test_every_old_name_is_reexported_from_its_defining_module(name: str) -> None:
    assert name in data.__all__
    value = getattr(data, name)
    home = getattr(value, "__module__", None)
    if home is not None and home.startswith("bge_rerank_plugins.finetune."):
        assert home != "bge_rerank_plugins.finetune.data", f"{name} is still defined in data"
        assert getattr(importlib.import_module(home), name) is value


def test_warnings_of_every_part_keep_the_facade_logger_name(caplog) -> None:
    repeated = [{"query": "q", "passage": "p", "score": 1}] * 2  # records.dedupe_rows
    contradicted = [{"query": "q", "pos": ["a"], "neg": ["a", "b"]}]  # formats
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins.finetune.data"):
        data.load_training_data(repeated)
        data.load_training_data(contradicted)
    names = {r.name for r in caplog.records if r.levelno == logging.WARNING}
    assert names == {"bge_rerank_plugins.finetune.data"}
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
