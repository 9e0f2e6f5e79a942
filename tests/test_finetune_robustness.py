"""Issue 19 (fine-tuning and data): no silent wrong answers, no lost data.

* the output folder: a non-empty folder the library did not write is refused; re-exporting over
  our own model keeps every file we did not write; kills during a save keep the old model;
* non-finite labels and teacher scores are errors with file and line; a non-finite training loss
  stops training with a RerankerError and keeps the last good model;
* nothing is dropped or overwritten silently: conflicting repeats are errors, harmless repeats
  and BEIR queries without a positive are counted in a warning, duplicate query ids are errors;
* encodings: a UTF-8 BOM is accepted, latin-1 is an error with file and line; ``null`` fields
  say "is null".
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bge_rerank_plugins.beir import load_beir, load_candidates, load_qrels, load_queries, write_beir
from bge_rerank_plugins.errors import RerankerError
from bge_rerank_plugins.finetune import (
    TrainingGroup,
    biencoder_teacher_scores,
    groups_from_beir,
    load_training_data,
    read_training_jsonl,
)
from bge_rerank_plugins.finetune.export import MARKER, check_output_dir, export_model


@dataclass
class Sample:
    """The shape of LlamaIndex's CrossEncoderFinetuningDatasetSample."""

    query: str
    context: str
    score: float


def _rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for query, pos, neg in [
        ("what do pandas eat", "The giant panda eats bamboo.", "Capital gains tax on shares."),
        ("capital of China", "Beijing is the capital of China.", "Apples are rich in fibre."),
        ("iphone in water", "Switch the wet iPhone off.", "The bank raised capital."),
        ("aspirin fever", "Aspirin reduces fever and pain.", "Boundary layer on a plate."),
    ]:
        rows += [
            {"query": query, "context": pos, "score": 1.0},
            {"query": query, "context": neg, "score": 0.0},
        ]
    return rows


def _engine(model: Path, out: Path, data: list | None = None, **kwargs: object):
    from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine

    options: dict[str, object] = {
        "model_id": str(model),
        "model_output_path": str(out),
        "batch_size": 2,
        "epochs": 1,
        "show_progress_bar": False,
    }
    options.update(kwargs)
    return CrossEncoderFinetuneEngine(data if data is not None else _rows(), **options)


def _jsonl(path: Path, lines: list[str], encoding: str = "utf-8", bom: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode(encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def _export(src: Path, target: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(src)
    export_model(model, AutoTokenizer.from_pretrained(src), target)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny BERT models with different weights."""
    from bge_rerank_plugins.testing import build_tiny_model

    root = tmp_path_factory.mktemp("bases")
    return build_tiny_model("bert", root / "a", seed=0), build_tiny_model(
        "bert", root / "b", seed=1
    )


# ------------------------------------------------------------------ the output folder
def _user_folder(path: Path) -> Path:
    (path / "src").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "src" / "main.py").write_text("print('hi')")
    return path


def test_engine_refuses_a_folder_it_did_not_write(tiny_bert: Path, tmp_path: Path) -> None:
    out = _user_folder(tmp_path / "project")
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match=r"model_output_path=.*did not write.*notes\.txt"):
        _engine(tiny_bert, out)
    assert _snapshot(out) == before
    # a plain file as the destination is refused too
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        check_output_dir(tmp_path / "file", "model_output_path")


def test_export_refuses_a_folder_it_did_not_write(bases: tuple[Path, Path], tmp_path: Path) -> None:
    out = _user_folder(tmp_path / "project")
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match="did not write"):
        _export(bases[0], out)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # a base model folder (written by someone else) is not overwritten either
    with pytest.raises(FileExistsError, match="did not write"):
        _export(bases[1], bases[0])


def test_re_export_over_our_model_keeps_the_other_files(
    bases: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "model"
    _export(bases[0], out)
    marker = json.loads((out / MARKER).read_text())
    assert "config.json" in marker["files"] and "model.safetensors" in marker["files"]
    _user_folder(out)
    (out / "src" / "link").symlink_to("main.py")
    first = (out / "model.safetensors").read_bytes()
    _export(bases[1], out)
    assert (out / "model.safetensors").read_bytes() != first  # the model was replaced
    assert (out / "notes.txt").read_text() == "my notes"  # ... and nothing of ours was lost
    assert (out / "src" / "main.py").read_text() == "print('hi')"
    assert os.readlink(out / "src" / "link") == "main.py"
    assert "notes.txt" not in json.loads((out / MARKER).read_text())["files"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_model_folder_of_an_older_version_is_recognised(
    bases: tuple[Path, Path], tmp_path: Path
) -> None:
    """Before the marker existed: config.json + training_summary.json mean a folder of ours."""
    out = tmp_path / "model"
    _export(bases[0], out)
    (out / MARKER).unlink()
    (out / "training_summary.json").write_text("{}")
    (out / "demo_training.json").write_text('{"epochs": 1}')  # what examples/demo.py adds
    _export(bases[1], out)
    assert (out / "demo_training.json").read_text() == '{"epochs": 1}'
    assert not (out / "training_summary.json").exists()  # ours: replaced with the model


def test_a_file_we_did_not_write_is_never_replaced(
    bases: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "model"
    _export(bases[0], out)
    marker = json.loads((out / MARKER).read_text())
    marker["files"].remove("tokenizer_config.json")  # as if the user had put this file there
    (out / MARKER).write_text(json.dumps(marker))
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match=r"tokenizer_config\.json"):
        _export(bases[1], out)
    assert _snapshot(out) == before


def test_failed_save_keeps_the_old_model_and_the_other_files(
    bases: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "model"
    _export(bases[0], out)
    _user_folder(out)
    before = _snapshot(out)
    model = AutoModelForSequenceClassification.from_pretrained(bases[1])
    real_save = model.save_pretrained

    def crash(directory: str | Path, **kwargs: object) -> None:
        real_save(directory, **kwargs)
        raise KeyboardInterrupt("killed during save")

    model.save_pretrained = crash  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        export_model(model, AutoTokenizer.from_pretrained(bases[1]), out)
    assert _snapshot(out) == before


_KILL_SCRIPT = """
import sys, time
from pathlib import Path
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from bge_rerank_plugins.finetune import export
src, target, flag = sys.argv[1:4]
model = AutoModelForSequenceClassification.from_pretrained(src)
real = export._carry_over
def slow(*args):
    kept = real(*args)  # the new model and the carried-over files are in the temporary folder
    Path(flag).write_text("ready")
    time.sleep(120)
    return kept
export._carry_over = slow
export.export_model(model, AutoTokenizer.from_pretrained(src), target)
"""


def test_sigkill_during_the_final_save_keeps_the_old_model(
    bases: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "model"
    _export(bases[0], out)
    _user_folder(out)
    before = _snapshot(out)
    flag = tmp_path / "flag"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILL_SCRIPT), str(bases[1]), str(out), str(flag)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.time() + 120
        while not flag.exists():
            assert proc.poll() is None, "the save ended before the kill"
            assert time.time() < deadline, "the save never got going"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert _snapshot(out) == before  # the old model and the user's files, untouched
    _export(bases[1], out)  # the next save cleans up the leftover and keeps the user's files
    assert (out / "notes.txt").read_text() == "my notes"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------ non-finite values
@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN"])
def test_non_finite_labels_are_errors_with_file_and_line(tmp_path: Path, literal: str) -> None:
    good = json.dumps({"query": "q", "passage": "p", "score": 1})
    path = _jsonl(
        tmp_path / "train.jsonl", [good, f'{{"query": "q", "passage": "n", "score": {literal}}}']
    )
    with pytest.raises(ValueError, match=r"train\.jsonl:2: field 'score' must be a finite number"):
        read_training_jsonl(path)
    flag = '{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1], '
    flag += f'"neg_scores": [{literal}]}}'
    _jsonl(path, [flag])
    with pytest.raises(
        ValueError, match=r"train\.jsonl:1: field 'neg_scores'\[0\] must be a finite"
    ):
        read_training_jsonl(path)
    group = {"query": "q", "positives": ["p"], "positive_scores": [math.inf], "negative_scores": []}
    with pytest.raises(ValueError, match=r"records\[0\]: .*positive_scores\[0\] must be a finite"):
        load_training_data([group])


def test_non_finite_grades_in_beir_files(tmp_path: Path) -> None:
    qrels = tmp_path / "dev.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq\td\t1\nq\td2\tinf\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:3: column 'score' must be a finite number"):
        load_qrels(qrels)
    qrels.write_text("q\td\tnan\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:1: column 'score' must be a finite"):
        load_qrels(qrels)
    cands = _jsonl(tmp_path / "c.jsonl", ['{"qid": "q", "pos": ["d"], "scores": {"d": Infinity}}'])
    with pytest.raises(ValueError, match=r"c\.jsonl:1: field 'scores'\['d'\] must be a finite"):
        load_candidates(cands)


def test_teacher_model_giving_nan_is_an_error_naming_the_group() -> None:
    class NanEncoder:
        def encode(self, texts, **_):
            return np.array([[math.nan, 1.0] if t == "bad" else [1.0, 0.0] for t in texts])

    groups = [TrainingGroup("q", ["good"], ["other"]), TrainingGroup("r", ["fine"], ["bad"])]
    with pytest.raises(ValueError, match=r"training group 1 \(query 'r'\).*'bad' is nan"):
        biencoder_teacher_scores(groups, NanEncoder())


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"score": math.inf}, r"dataset\[3\]: field 'score' must be a finite number, got inf"),
        ({"score": math.nan}, r"dataset\[3\]: field 'score' must be a finite number"),
        ({"context": "  "}, r"dataset\[3\]: field 'context' is empty"),
        ({"query": ""}, r"dataset\[3\]: field 'query' is empty"),
    ],
)
def test_llama_index_samples_are_validated_on_every_path(
    tiny_bert: Path, tmp_path: Path, change: dict, match: str
) -> None:
    """The engine's LlamaIndex path (loss='bce', custom losses, val_dataset) validates too."""
    data = _rows()
    data[3] = {**data[3], **change}
    samples = [Sample(**r) for r in data]  # type: ignore[arg-type]
    for loss in ("bce", "softmax"):
        with pytest.raises(ValueError, match=match):
            _engine(tiny_bert, tmp_path / loss, samples, loss=loss)
    with pytest.raises(ValueError, match=match.replace("dataset", "val_dataset")):
        _engine(tiny_bert, tmp_path / "val", _rows(), loss="bce", val_dataset=samples)


class _LossAt:
    """A BCE loss that misbehaves on its ``at``-th call: NaN loss, or NaN weights."""

    def __init__(self, at: int, what: str) -> None:
        self.at, self.what, self.calls = at, what, 0

    def __call__(self, model):  # the engine's "model -> loss" protocol
        from sentence_transformers.cross_encoder import losses

        outer = self

        class Loss(losses.BinaryCrossEntropyLoss):
            def forward(self, inputs, labels, prompt=None, task=None):  # type: ignore[override]
                import torch

                outer.calls += 1
                loss = super().forward(inputs, labels)
                if outer.calls == outer.at and outer.what == "loss":
                    return loss * float("nan")
                if outer.calls == outer.at and outer.what == "weights":
                    with torch.no_grad():  # as an optimizer blow-up would leave them
                        next(self.model.parameters()).fill_(float("nan"))
                return loss

        return Loss(model)


def test_non_finite_loss_stops_training_and_keeps_the_last_good_model(
    tiny_bert: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    data = _rows()
    pristine = copy.deepcopy(data)
    engine = _engine(tiny_bert, out, data, loss=_LossAt(3, "loss"), checkpoint_steps=2, max_steps=6)
    engine.save(out)  # a model already in the output folder
    before = _snapshot(out)
    with pytest.raises(RerankerError, match=r"loss is nan at optimizer step 3.*checkpoint-2"):
        engine.finetune()
    assert _snapshot(out) == before  # the previous model is kept
    assert (tmp_path / "out-checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert data == pristine  # inputs are never mutated


def test_non_finite_weights_are_never_checkpointed_or_saved(
    tiny_bert: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    engine = _engine(tiny_bert, out, loss=_LossAt(2, "weights"), checkpoint_steps=2, max_steps=4)
    with pytest.raises(RerankerError, match=r"holds NaN or infinite values after optimizer step 2"):
        engine.finetune()
    assert not (tmp_path / "out-checkpoints" / "checkpoint-2").exists()
    assert not out.exists()
    with pytest.raises(RerankerError, match="Refusing to save"):
        engine.save(out)
    assert not out.exists()


# ------------------------------------------------------------------ nothing dropped silently
def test_conflicting_repeated_labels_are_errors(tmp_path: Path) -> None:
    rows = [
        json.dumps({"query": "q", "passage": "p", "score": 1}),
        json.dumps({"query": "q", "passage": "n", "score": 0}),
        json.dumps({"query": "q", "passage": "p", "score": 0}),
    ]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(
        ValueError, match=r"train\.jsonl:3: .*label 0 here but 1 at .*train\.jsonl:1"
    ):
        read_training_jsonl(path)
    samples = [Sample("q", "p", 1), Sample("q", "n", 0), Sample("q", "p", 0.5)]
    from bge_rerank_plugins.finetune import from_llama_index_samples

    with pytest.raises(ValueError, match=r"samples\[2\]: .*label 0\.5 here but 1 at samples\[0\]"):
        from_llama_index_samples(samples)


def test_identical_repeats_are_kept_once_and_counted(tmp_path: Path, caplog) -> None:
    rows = [{"query": "q", "passage": "p", "score": 1}] * 3 + [
        {"query": "q", "passage": "n", "score": 0}
    ]
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins.finetune.data"):
        groups = load_training_data(rows)
    assert groups == [TrainingGroup("q", ("p",), ("n",))]
    assert "2 repeated (query, passage) rows" in caplog.text and "records[1]" in caplog.text


def test_a_negative_that_is_also_a_positive_is_counted(caplog) -> None:
    records = [
        {"query": "q", "pos": ["a"], "neg": ["a", "b"], "pos_scores": [2], "neg_scores": [2, 0]},
        {"query": "q", "pos": ["c"], "neg": ["a"], "pos_scores": [1], "neg_scores": [2]},
    ]
    pristine = copy.deepcopy(records)
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins.finetune.data"):
        groups = load_training_data(records)
    assert groups[0].negatives == ("b",) and groups[0].negative_scores == (0.0,)
    assert groups[1].negatives == () and groups[1].negative_scores == ()
    assert "2 negatives that are also a positive" in caplog.text and "records[0]" in caplog.text
    assert records == pristine
    triplets = [
        {"query": "q", "pos_doc": "a", "neg_doc": "b"},
        {"query": "q", "pos_doc": "b", "neg_doc": "a"},
    ]
    (merged,) = load_training_data(triplets)
    assert merged.positives == ("a", "b") and merged.negatives == ()


def test_conflicting_teacher_scores_are_errors() -> None:
    records = [
        {"query": "q", "pos": ["a"], "neg": ["b"], "pos_scores": [2], "neg_scores": [0]},
        {"query": "q", "pos": ["c"], "neg": ["b"], "pos_scores": [1], "neg_scores": [5]},
    ]
    with pytest.raises(
        ValueError, match=r"records\[1\]: .*'b'.*teacher score 5 here but 0 at records\[0\]"
    ):
        load_training_data(records)


def _beir(tmp_path: Path) -> Path:
    corpus = {f"d{i}": {"title": "", "text": f"topic{i % 3} words {i}"} for i in range(9)}
    return write_beir(
        tmp_path / "beir",
        corpus=corpus,
        queries={"q1": "topic1 words", "q2": "topic2", "q3": "nothing", "q4": "zero"},
        qrels={"train": {"q1": {"d1": 1}, "q2": {"d2": 2}, "q3": {"d5": 0}, "q4": {"d6": 0}}},
    )


def test_beir_queries_without_a_positive_are_counted_in_a_warning(tmp_path: Path, caplog) -> None:
    folder = _beir(tmp_path)
    with caplog.at_level(logging.INFO, logger="bge_rerank_plugins.finetune.data"):
        groups = groups_from_beir(folder, "train")
    assert [g.query for g in groups] == ["topic1 words", "topic2"]
    (record,) = [r for r in caplog.records if "no positive" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "2 of 4 queries" in record.getMessage() and "'q3', 'q4'" in record.getMessage()


def test_duplicate_query_ids_are_errors(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "queries.jsonl",
        [json.dumps({"_id": "q1", "text": "first"}), json.dumps({"_id": "q1", "text": "second"})],
    )
    with pytest.raises(ValueError, match=r"queries\.jsonl:2: duplicate query id 'q1' .*line 1"):
        load_queries(path)


# ------------------------------------------------------------------ encodings and nulls
def test_bom_prefixed_files_load(tmp_path: Path) -> None:
    train = _jsonl(
        tmp_path / "train.jsonl",
        [json.dumps({"query": "q", "passage": "p", "score": 1})],
        bom=True,
    )
    assert read_training_jsonl(train) == [TrainingGroup("q", ("p",), ())]
    listed = tmp_path / "train.json"
    listed.write_bytes(
        b"\xef\xbb\xbf" + json.dumps([{"query": "q", "pos_doc": "p", "neg_doc": "n"}]).encode()
    )
    assert load_training_data(listed) == [TrainingGroup("q", ("p",), ("n",))]
    folder = _beir(tmp_path)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv"):
        path = folder / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    data = load_beir(folder, "train")  # the qrels header is recognised, not read as a grade
    assert data.qrels["q1"] == {"d1": 1} and data.queries["q1"].text == "topic1 words"


def test_latin1_files_are_errors_with_file_and_line(tmp_path: Path) -> None:
    rows = [json.dumps({"query": "q", "passage": "p", "score": 1})]
    rows.append('{"query": "caf\u00e9", "passage": "p2", "score": 0}')
    path = _jsonl(tmp_path / "train.jsonl", rows, encoding="latin-1")
    with pytest.raises(
        ValueError, match=r"train\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 15\)"
    ):
        read_training_jsonl(path)
    listed = tmp_path / "train.json"
    listed.write_bytes(
        '[\n{"query": "q", "pos_doc": "p", "neg_doc": "n"},\n{"query": "\u00e9"}]'.encode("latin-1")
    )
    with pytest.raises(ValueError, match=r"train\.json:3: not valid UTF-8"):
        load_training_data(listed)
    qrels = tmp_path / "dev.tsv"
    qrels.write_bytes("query-id\tcorpus-id\tscore\nq\td\u00e9\t1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"dev\.tsv:2: not valid UTF-8.*latin-1"):
        load_qrels(qrels)


def test_null_fields_say_null_not_missing() -> None:
    with pytest.raises(ValueError, match=r"records\[0\]: field 'passage' is null"):
        load_training_data([{"query": "q", "passage": None, "score": 1}])
    with pytest.raises(ValueError, match=r"records\[0\]: field 'score' is null"):
        load_training_data([{"query": "q", "passage": "p", "score": None}])
    with pytest.raises(ValueError, match=r"records\[0\]: field 'pos' is null"):
        load_training_data([{"query": "q", "pos": None, "neg": ["n"]}])
    # a missing field is still called missing
    with pytest.raises(ValueError, match=r"missing field 'score' or 'label'"):
        load_training_data([{"query": "q", "passage": "p"}])
