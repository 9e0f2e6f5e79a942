"""Training-data formats: every input turns into TrainingGroup records; bad rows are named."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from bge_rerank_plugins.beir import write_beir
from bge_rerank_plugins.finetune import (
    NegativeMiningConfig,
    PointwiseExample,
    TrainingGroup,
    from_llama_index_samples,
    groups_from_beir,
    groups_from_pointwise,
    groups_to_pointwise,
    load_training_data,
    read_training_jsonl,
    write_training_jsonl,
)
from bge_rerank_plugins.finetune.data import detect_format


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n",
        encoding="utf-8",
    )
    return path


def test_training_group_validates():
    group = TrainingGroup("q", ["p"], ["n1", "n2"], [0.9], [0.1, 0.2])
    assert group.positives == ("p",) and group.negative_scores == (0.1, 0.2)
    assert group.size == 3 and group.has_scores
    assert group.to_dict() == {
        "query": "q", "pos": ["p"], "neg": ["n1", "n2"], "pos_scores": [0.9],
        "neg_scores": [0.1, 0.2],
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"TrainingGroup\.query is empty"):
        TrainingGroup(" ", ["p"])
    with pytest.raises(ValueError, match="positives must be a list of strings"):
        TrainingGroup("q", "p")
    with pytest.raises(ValueError, match=r"negatives\[1\] must be a string, got int"):
        TrainingGroup("q", ["p"], ["n", 3])
    with pytest.raises(ValueError, match="both positive_scores and negative_scores"):
        TrainingGroup("q", ["p"], ["n"], positive_scores=[1.0])
    with pytest.raises(ValueError, match="negative_scores has 1 values for 2 negatives"):
        TrainingGroup("q", ["p"], ["n1", "n2"], [1.0], [0.0])


def test_pointwise_groups_by_query_and_round_trips():
    rows = [
        PointwiseExample("q1", "a", 1.0),
        PointwiseExample("q2", "c", 0.0),
        PointwiseExample("q1", "b", 0.0),
        PointwiseExample("q1", "a", 1.0),  # an identical repeat is kept once
    ]
    groups = groups_from_pointwise(rows)
    assert groups == [TrainingGroup("q1", ("a",), ("b",)), TrainingGroup("q2", (), ("c",))]
    assert groups_to_pointwise(groups) == [
        PointwiseExample("q1", "a", 1.0),
        PointwiseExample("q1", "b", 0.0),
        PointwiseExample("q2", "c", 0.0),
    ]


def test_soft_labels_are_kept_as_scores():
    rows = [PointwiseExample("q", "a", 0.8), PointwiseExample("q", "b", 0.3)]
    (group,) = groups_from_pointwise(rows)
    assert group.positives == ("a",) and group.negatives == ("b",)
    assert group.positive_scores == (0.8,) and group.negative_scores == (0.3,)
    assert groups_to_pointwise([group], use_scores=True) == rows
    assert [r.label for r in groups_to_pointwise([group])] == [1.0, 0.0]
    (strict,) = groups_from_pointwise(rows, positive_threshold=0.9)
    assert strict.positives == () and strict.negatives == ("a", "b")


def test_every_record_format():
    @dataclass
    class Sample:  # the shape of LlamaIndex's CrossEncoderFinetuningDatasetSample
        query: str
        context: str
        score: int

    assert load_training_data([Sample("q", "good", 1), Sample("q", "bad", 0)]) == [
        TrainingGroup("q", ("good",), ("bad",))
    ]
    assert load_training_data([{"query": "q", "context": "c", "score": 1}]) == [
        TrainingGroup("q", ("c",), ())
    ]
    assert load_training_data([{"query": "q", "passage": "p", "label": 0}]) == [
        TrainingGroup("q", (), ("p",))
    ]
    triplets = [
        {"query": "q", "pos_doc": "p1", "neg_doc": "n1"},
        {"query": "q", "pos_doc": "p1", "neg_doc": "n2"},
        {"query": "r", "pos_doc": "p2", "neg_doc": "n1"},
    ]
    assert load_training_data(triplets) == [
        TrainingGroup("q", ("p1",), ("n1", "n2")),
        TrainingGroup("r", ("p2",), ("n1",)),
    ]
    flag = [{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [3.5], "neg_scores": [-1]}]
    assert load_training_data(flag) == [TrainingGroup("q", ("p",), ("n",), (3.5,), (-1.0,))]
    grouped = [
        {"query": "q", "positives": ["p"], "negatives": ["n"]},
        {"query": "r", "positives": ["p2"], "positive_scores": [2], "negative_scores": []},
    ]
    assert load_training_data(grouped) == [
        TrainingGroup("q", ("p",), ("n",)),
        TrainingGroup("r", ("p2",), (), (2.0,), ()),
    ]
    ready = TrainingGroup("z", ("p",), ())
    assert load_training_data([ready]) == [ready]
    samples = from_llama_index_samples([Sample("q", "c", 1)])
    assert samples == [PointwiseExample("q", "c", 1.0)]


def test_detect_format_and_unknown_records():
    assert detect_format({"query": "q", "pos_doc": "p", "neg_doc": "n"}) == "triplet"
    assert detect_format({"query": "q", "passage": "p", "score": 1}) == "pointwise"
    assert detect_format({"query": "q", "context": "p", "score": 1}) == "llama_index"
    with pytest.raises(ValueError, match=r"records\[0\]: cannot tell the format.*\['query', 'x'\]"):
        load_training_data([{"query": "q", "x": 1}])
    assert detect_format({"query": "q", "positives": ["p"]}) == "group"
    with pytest.raises(ValueError, match=r"records\[1\]: TrainingGroup.negative_scores has 2"):
        load_training_data(
            [
                {"query": "q", "positives": ["p"]},
                {
                    "query": "q",
                    "positives": ["p"],
                    "positive_scores": [1],
                    "negative_scores": [0, 1],
                },
            ]
        )
    with pytest.raises(ValueError, match=r"records\[0\]: field 'positives' is empty"):
        load_training_data([{"query": "q", "positives": []}])
    with pytest.raises(ValueError, match="format must be 'auto' or one of"):
        load_training_data([{"query": "q"}], format="csv")
    with pytest.raises(TypeError, match="source must be a file path"):
        load_training_data(42)
    with pytest.raises(ValueError, match="no training records"):
        load_training_data([])


def test_file_errors_name_file_line_and_field(tmp_path):
    path = _jsonl(
        tmp_path / "train.jsonl",
        [{"query": "q", "passage": "p", "score": 1}, "", {"query": "q", "passage": "p2"}],
    )
    with pytest.raises(ValueError, match=r"train\.jsonl:3: missing field 'score' or 'label'"):
        read_training_jsonl(path)
    _jsonl(path, [{"query": "q", "pos": ["p"], "neg": []}, {"query": "q", "pos": "p", "neg": []}])
    with pytest.raises(ValueError, match=r"train\.jsonl:2: field 'pos' must be a list of strings"):
        read_training_jsonl(path)
    _jsonl(path, [{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0]}])
    with pytest.raises(ValueError, match=r":1: field 'pos_scores' is given but 'neg_scores'"):
        read_training_jsonl(path)
    _jsonl(path, [{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1], "neg_scores": []}])
    with pytest.raises(ValueError, match=r":1: field 'neg_scores' has 0 values for 1 passages"):
        read_training_jsonl(path)
    _jsonl(path, [{"query": "q", "pos_doc": "p", "neg_doc": ""}])
    with pytest.raises(ValueError, match=r"train\.jsonl:1: field 'neg_doc' is empty"):
        read_training_jsonl(path)
    _jsonl(path, [{"query": "q", "context": "c", "score": "yes"}])
    with pytest.raises(ValueError, match=r":1: field 'score' must be a number, got str"):
        read_training_jsonl(path)
    _jsonl(path, [{"query": "q", "pos": [], "neg": ["n"]}])
    with pytest.raises(ValueError, match=r":1: field 'pos' is empty"):
        read_training_jsonl(path)
    _jsonl(path, ["{bad"])
    with pytest.raises(ValueError, match=r"train\.jsonl:1: invalid JSON"):
        load_training_data(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_training_data(tmp_path / "missing.jsonl")


def test_json_list_file_and_write_round_trip(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"query": "q", "pos_doc": "p", "neg_doc": "n"}]), "utf-8")
    groups = load_training_data(path)
    assert groups == [TrainingGroup("q", ("p",), ("n",))]
    scored = [*groups, TrainingGroup("r", ("x",), ("y",), (2.0,), (0.5,))]
    out = write_training_jsonl(scored, tmp_path / "flag.jsonl")
    assert read_training_jsonl(out) == scored
    first = json.loads(out.read_text("utf-8").splitlines()[0])
    assert first == {"query": "q", "pos": ["p"], "neg": ["n"]}


def _beir(tmp_path: Path) -> Path:
    corpus = {f"d{i}": {"title": f"T{i}", "text": f"topic{i % 3} words {i}"} for i in range(12)}
    return write_beir(
        tmp_path / "beir",
        corpus=corpus,
        queries={"q1": "topic1 words", "q2": "topic2", "q3": "nothing"},
        qrels={"train": {"q1": {"d1": 1, "d4": 0}, "q2": {"d2": 2}, "q3": {"d5": 0}}},
        candidates={
            "train": [
                {"qid": "q1", "pos": ["d1"], "neg": [], "ranked": ["d1", "d4", "d7", "d10", "d0"]},
                {"qid": "q2", "pos": ["d2"], "neg": [], "ranked": ["d5", "d2", "d8", "d11"]},
            ]
        },
    )


def test_groups_from_beir(tmp_path):
    folder = _beir(tmp_path)
    config = NegativeMiningConfig(num_negatives=2, sampling="top")
    groups = groups_from_beir(folder, "train", negatives=config)
    assert [g.query for g in groups] == ["topic1 words", "topic2"]  # q3 has no positive
    assert groups[0].positives == ("T1\ntopic1 words 1",)
    # candidates' BM25 lists, the positive d1 excluded, the 2 best
    assert groups[0].negatives == ("T4\ntopic1 words 4", "T7\ntopic1 words 7")
    assert groups[1].negatives == ("T5\ntopic2 words 5", "T8\ntopic2 words 8")
    # the same through the generic loader, with a field template
    again = load_training_data(folder, split="train", negatives=config, template="{text}")
    assert again[0].positives == ("topic1 words 1",)
    with pytest.raises(ValueError, match=r"pass split= \(one of \['train'\]\)"):
        load_training_data(folder)
