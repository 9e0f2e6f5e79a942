"""The evaluation package, bm25 and jsonl split (issue 20): same names, progress passed per call.

Covers: the public names of the former single-file ``evaluation`` module, and those that moved
out of ``beir`` (BM25, the UTF-8 / JSON-lines readers), still import from their old homes;
``show_progress_bar`` reaches the scorer as an argument of the one ``score_many`` call and never
changes a (possibly shared) scorer; ``fields.as_template`` and ``fields.best_first``; the size
budget and the "no private cross-module imports" rule for the modules of this split; their
docstring examples.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from bge_rerank_plugins.beir import load_beir, write_beir
from bge_rerank_plugins.evaluation import evaluate_models, evaluate_reranker
from bge_rerank_plugins.fields import DEFAULT_FIELDS, PassageTemplate, as_template, best_first

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bge_rerank_plugins"
SPLIT_MODULES = [
    "evaluation/__init__.py",
    "evaluation/metrics.py",
    "evaluation/candidates.py",
    "evaluation/runner.py",
    "evaluation/report.py",
    "bm25.py",
    "beir.py",
    "jsonl.py",
]
CORPUS = {
    "d1": {"title": "Apple", "text": "apple pie"},
    "d2": {"title": "Banana", "text": "banana bread"},
    "d3": {"title": "Cherry", "text": "cherry tart"},
}


def _folder(tmp_path: Path) -> Path:
    return write_beir(
        tmp_path / "tiny",
        corpus=CORPUS,
        queries={"q1": "apple", "q2": "banana"},
        qrels={"dev": {"q1": {"d1": 1}, "q2": {"d2": 1}}},
        candidates={
            "dev": [
                {"qid": "q1", "pos": ["d1"], "neg": ["d2"], "ranked": ["d2", "d1"]},
                {"qid": "q2", "pos": ["d2"], "neg": ["d3"], "ranked": ["d3", "d2"]},
            ]
        },
    )


# ---------------------------------------------------------------------- public names
def test_the_former_public_names_still_import():
    import bge_rerank_plugins
    import bge_rerank_plugins.evaluation as evaluation

    former_all = {
        "DEFAULT_KS", "Comparison", "EvalQuery", "EvaluationResult", "QueryResult",
        "evaluate_models", "evaluate_reranker", "hit_at_k", "mrr_at_k", "ndcg_at_k",
        "prepare_queries", "query_metrics", "recall_at_k",
    }  # fmt: skip
    assert set(evaluation.__all__) == former_all
    for name in [*former_all, "METRICS", "Grades"]:
        assert getattr(evaluation, name) is not None
    assert bge_rerank_plugins.evaluate_models is evaluation.evaluate_models
    assert bge_rerank_plugins.evaluate_reranker is evaluation.evaluate_reranker
    # the stale claim is gone: the fine-tuning engine validates with sentence-transformers
    assert "fine-tuning engine calls them" not in (evaluation.__doc__ or "")


def test_bm25_and_the_readers_moved_out_of_beir_and_are_re_exported():
    from bge_rerank_plugins import beir, bm25, jsonl

    assert beir.Bm25Index is bm25.Bm25Index
    assert beir.bm25_tokenize is bm25.bm25_tokenize
    assert bm25.Bm25Index.__module__ == "bge_rerank_plugins.bm25"
    for name in ("decode_utf8", "iter_jsonl", "iter_lines"):
        assert getattr(beir, name) is getattr(jsonl, name)
    moved = {"Bm25Index", "bm25_tokenize", "decode_utf8", "iter_jsonl", "iter_lines"}
    assert moved <= set(beir.__all__)


# ---------------------------------------------------------------------- progress bar
class RecordingScorer:
    """A duck-typed scorer whose score_many takes show_progress_bar, as the real one does."""

    def __init__(self) -> None:
        self.show_progress_bar = "untouched"
        self.template = None
        self.seen: list[tuple[object, object]] = []

    def score_many(self, queries, candidates, *, show_progress_bar=None):
        self.seen.append((self.show_progress_bar, show_progress_bar))
        return [[float(len(t)) for t in c] for c in candidates]


class PlainScorer:
    """A duck-typed scorer without the keyword (e.g. a wrapper written before it existed)."""

    def __init__(self) -> None:
        self.show_progress_bar = "untouched"
        self.states: list[object] = []

    def score_many(self, queries, candidates):
        self.states.append(self.show_progress_bar)
        return [[0.0] * len(c) for c in candidates]


def test_progress_choice_is_an_argument_not_a_change_to_the_scorer(tmp_path):
    folder = _folder(tmp_path)
    scorer = RecordingScorer()
    evaluate_reranker(scorer, folder, "dev", show_progress_bar=False)
    evaluate_models([scorer], folder, "dev", show_progress_bar=True, include_first_stage=False)
    evaluate_reranker(scorer, folder, "dev")  # None: the scorer's own setting, nothing passed
    # during each call the scorer's attribute was never changed; the choice came as an argument
    assert scorer.seen == [("untouched", False), ("untouched", True), ("untouched", None)]
    assert scorer.show_progress_bar == "untouched"


def test_a_scorer_without_the_keyword_is_called_as_before_and_left_alone(tmp_path):
    scorer = PlainScorer()
    result = evaluate_reranker(scorer, _folder(tmp_path), "dev", show_progress_bar=False)
    assert result.num_pairs == 4
    assert scorer.states == ["untouched"]
    assert scorer.show_progress_bar == "untouched"


class _RecordingBar:
    """Stands in for tqdm: records each bar's total and the scorer's attribute at that time."""

    made: ClassVar[list[tuple[int, object]]] = []
    scorer: ClassVar[object] = None

    def __init__(self, total: int, **_: object) -> None:
        type(self).made.append((total, getattr(type(self).scorer, "show_progress_bar", None)))

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def test_real_scorer_takes_a_per_call_progress_flag(tiny_bert, tmp_path, monkeypatch):
    import tqdm.auto

    from bge_rerank_plugins import CrossEncoderScorer

    scorer = CrossEncoderScorer(tiny_bert, show_progress_bar=False)
    monkeypatch.setattr(tqdm.auto, "tqdm", _RecordingBar)
    monkeypatch.setattr(_RecordingBar, "made", [])
    monkeypatch.setattr(_RecordingBar, "scorer", scorer)
    plain = scorer.score_many(["apple"], [["apple pie", "cherry tart"]])
    assert _RecordingBar.made == []  # the scorer's own setting: no bar
    with_bar = scorer.score_many(["apple"], [["apple pie", "cherry tart"]], show_progress_bar=True)
    assert _RecordingBar.made == [(2, False)]  # a bar for this call; the attribute unchanged
    assert with_bar[0] == pytest.approx(plain[0], abs=1e-6)

    result = evaluate_reranker(scorer, _folder(tmp_path), "dev", show_progress_bar=True)
    assert result.num_pairs == 4
    assert _RecordingBar.made == [(2, False), (4, False)]
    assert scorer.show_progress_bar is False


def test_a_shared_scorer_keeps_its_setting_while_another_thread_evaluates(tiny_bert, tmp_path):
    """The old code flipped ``scorer.show_progress_bar`` for the length of the evaluation."""
    from bge_rerank_plugins import CrossEncoderScorer

    scorer = CrossEncoderScorer(tiny_bert, show_progress_bar=False)
    dataset = load_beir(_folder(tmp_path), "dev")
    seen: set[object] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.add(scorer.show_progress_bar)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(3):
            evaluate_reranker(scorer, dataset, show_progress_bar=True)
    finally:
        done.set()
        watcher.join()
    assert seen == {False}


# ---------------------------------------------------------------------- fields helpers
def test_as_template():
    assert as_template(None) == PassageTemplate(DEFAULT_FIELDS)
    assert as_template(None, default="{text}").fields == ("text",)
    assert as_template(None, default=None) is None
    template = PassageTemplate("{title}")
    assert as_template(template) is template
    from_list = as_template(["title", "text"])
    assert from_list.template == ("title", "text")
    hash(from_list)  # a list is stored as a tuple: the template stays hashable
    with pytest.raises(TypeError, match="template must be a format string"):
        as_template(42)
    with pytest.raises(ValueError, match="names no field"):
        as_template("no fields here")


def test_best_first_is_stable_on_ties():
    assert best_first([1.0, 3.0, 1.0, 3.0, 2.0]) == [1, 3, 4, 0, 2]
    assert best_first([0.5] * 4) == [0, 1, 2, 3]
    assert best_first([-1.0, float("inf"), -float("inf")]) == [1, 0, 2]


# ---------------------------------------------------------------------- layout rules
@pytest.mark.parametrize("path", SPLIT_MODULES)
def test_module_size_budget(path):
    lines = (PACKAGE / path).read_text(encoding="utf-8").count("\n")
    assert lines < 400, f"{path} has {lines} lines; the budget is 400"


@pytest.mark.parametrize("path", [*SPLIT_MODULES, "fields.py"])
def test_no_private_names_imported_from_other_modules(path):
    tree = ast.parse((PACKAGE / path).read_text(encoding="utf-8"))
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and (node.level > 0 or (node.module or "").startswith("bge_rerank_plugins"))
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


@pytest.mark.parametrize(
    "name",
    [
        "bge_rerank_plugins.evaluation",
        "bge_rerank_plugins.evaluation.metrics",
        "bge_rerank_plugins.bm25",
        "bge_rerank_plugins.jsonl",
        "bge_rerank_plugins.fields",
    ],
)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
