"""Metrics against hand-computed values, the evaluation runs, the report files and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bge_rerank_plugins.beir import load_beir, write_beir
from bge_rerank_plugins.evaluation import (
    EvalQuery,
    evaluate_models,
    evaluate_reranker,
    hit_at_k,
    mrr_at_k,
    ndcg_at_k,
    prepare_queries,
    query_metrics,
    recall_at_k,
)

# ---------------------------------------------------------------------- metrics by hand
BINARY = {"b": 1, "d": 1}
RANKING = ["a", "b", "c", "d"]


def test_binary_metrics_by_hand():
    assert hit_at_k(RANKING, BINARY, 1) == 0.0
    assert hit_at_k(RANKING, BINARY, 2) == 1.0
    assert mrr_at_k(RANKING, BINARY, 1) == 0.0
    assert mrr_at_k(RANKING, BINARY, 3) == 0.5
    assert recall_at_k(RANKING, BINARY, 3) == 0.5
    assert recall_at_k(RANKING, BINARY, 10) == 1.0  # k beyond the list
    # DCG@3 = 1/log2(3); IDCG@3 = 1 + 1/log2(3)
    assert ndcg_at_k(RANKING, BINARY, 3) == pytest.approx(0.386853, abs=1e-6)
    # DCG@10 = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3)
    assert ndcg_at_k(RANKING, BINARY, 10) == pytest.approx(0.650921, abs=1e-6)
    assert ndcg_at_k(["b", "d", "a"], BINARY, 2) == pytest.approx(1.0)


GRADED = {"x": 1, "y": 0, "z": 3, "w": 2}  # "w" was never retrieved


def test_graded_metrics_by_hand():
    ranking = ["x", "y", "z"]
    # DCG@3 = 1/1 + 0/log2(3) + 3/log2(4) = 2.5
    # IDCG@3 = 3/1 + 2/log2(3) + 1/log2(4) = 4.761860
    assert ndcg_at_k(ranking, GRADED, 3) == pytest.approx(2.5 / 4.761860, abs=1e-6)
    assert ndcg_at_k(ranking, GRADED, 1) == pytest.approx(1 / 3)
    # relevance threshold 1: x, z, w are relevant
    assert hit_at_k(ranking, GRADED, 1) == 1.0
    assert recall_at_k(ranking, GRADED, 3) == pytest.approx(2 / 3)
    # threshold 2: only z and w
    assert hit_at_k(ranking, GRADED, 1, threshold=2) == 0.0
    assert mrr_at_k(ranking, GRADED, 3, threshold=2) == pytest.approx(1 / 3)
    assert recall_at_k(ranking, GRADED, 3, threshold=2) == 0.5


def test_no_relevant_document_and_negative_grades():
    assert ndcg_at_k(["a"], {"a": 0}, 5) == 0.0
    assert recall_at_k(["a"], {}, 5) == 0.0
    assert ndcg_at_k(["a", "b"], {"a": -1, "b": 1}, 2) == pytest.approx(1 / math.log2(3))
    with pytest.raises(ValueError, match="k must be a positive int"):
        ndcg_at_k(["a"], {"a": 1}, 0)


def test_query_metrics_keys():
    metrics = query_metrics(RANKING, BINARY, ks=(1, 3))
    assert list(metrics) == [
        "hit@1", "mrr@1", "ndcg@1", "recall@1", "hit@3", "mrr@3", "ndcg@3", "recall@3",
    ]  # fmt: skip
    assert metrics["mrr@3"] == 0.5


# ---------------------------------------------------------------------- tiny dataset
CORPUS = {
    "d1": {"title": "Apple", "text": "apple pie recipe"},
    "d2": {"title": "Banana", "text": "banana bread recipe"},
    "d3": {"title": "Cherry", "text": "cherry tart"},
    "d4": {"title": "Date", "text": "date palm fruit"},
    "d5": {"title": "Elder", "text": "elderflower cordial"},
}
QUERIES = {"q1": "apple", "q2": "banana", "q3": "cherry", "q4": "fig"}


def _dataset(tmp_path: Path) -> Path:
    return write_beir(
        tmp_path / "tiny",
        corpus=CORPUS,
        queries=QUERIES,
        qrels={
            "dev": {
                "q1": {"d2": 1, "d5": 1},  # d5 is not among the candidates
                "q2": {"d2": 2, "d1": 1},
                "q3": {"d4": 0},  # no relevant document: skipped
                "q4": {"d3": 1},
            }
        },
        candidates={
            "dev": [
                {"qid": "q1", "pos": ["d2"], "neg": ["d1", "d3"], "ranked": ["d1", "d2", "d3"]},
                {"qid": "q2", "pos": ["d2"], "neg": ["d1", "d4"], "ranked": ["d4", "d1", "d2"]},
                {"qid": "q3", "pos": [], "neg": ["d4"], "ranked": ["d4"]},
                {"qid": "q4", "pos": ["d3"], "neg": ["d1"], "ranked": ["d3", "d1"]},
            ]
        },
    )


class FakeScorer:
    """Scores by a lookup on the passage's title; records each score_many call."""

    def __init__(self, by_title: dict[str, float], default: float = 0.0) -> None:
        self.by_title = by_title
        self.default = default
        self.calls: list[tuple[list[str], list[list[str]]]] = []
        self.model_name = "/models/fake-ce"
        self.template = None
        self.show_progress_bar = None

    def score_many(self, queries, candidates):
        self.calls.append((list(queries), [list(c) for c in candidates]))
        return [[self.by_title.get(t.split("\n")[0], self.default) for t in c] for c in candidates]


def test_first_stage_metrics_by_hand(tmp_path):
    result = evaluate_reranker(None, _dataset(tmp_path), "dev", top_k=30, ks=(1, 3))
    assert result.name == "BM25"  # the candidates file has ranked lists
    assert result.num_queries == 3 and result.num_skipped == 1
    assert [r.qid for r in result.per_query] == ["q1", "q2", "q4"]
    # q1: [d1, d2, d3], relevant d2, d5 (missed) -> mrr@3 1/2, recall@3 1/2
    # q2: [d4, d1, d2], grades d2=2, d1=1 -> mrr@3 1/2, recall@3 1
    # q4: [d3, d1], relevant d3 -> 1 everywhere
    assert result.metrics["hit@1"] == pytest.approx(1 / 3)
    assert result.metrics["mrr@3"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert result.metrics["recall@3"] == pytest.approx((0.5 + 1 + 1) / 3)
    ndcg_q1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    ndcg_q2 = (1 / math.log2(3) + 2 / 2) / (2 + 1 / math.log2(3))
    assert result.metrics["ndcg@3"] == pytest.approx((ndcg_q1 + ndcg_q2 + 1) / 3)
    assert result.per_query[0].ranking == ("d1", "d2", "d3")
    assert result.per_query[0].scores is None


def test_reranking_uses_one_score_many_call_and_keeps_ties_in_first_stage_order(tmp_path):
    scorer = FakeScorer({"Banana": 0.9, "Apple": 0.5, "Cherry": 0.5, "Date": 0.5})
    result = evaluate_reranker(scorer, _dataset(tmp_path), "dev", top_k=30, ks=(1, 3))
    assert len(scorer.calls) == 1
    queries, candidates = scorer.calls[0]
    assert queries == ["apple", "banana", "fig"]
    assert [len(c) for c in candidates] == [3, 3, 2]
    assert candidates[0][0] == "Apple\napple pie recipe"  # title + newline + text
    assert result.num_pairs == 8
    assert result.name == "fake-ce"
    by_qid = {r.qid: r for r in result.per_query}
    # q1: Banana first, then the tie Apple/Cherry in first-stage order (d1 before d3)
    assert by_qid["q1"].ranking == ("d2", "d1", "d3")
    assert by_qid["q1"].scores == (0.9, 0.5, 0.5)
    # q2 first stage [d4, d1, d2] -> d2 first, then the tie d4, d1 as given
    assert by_qid["q2"].ranking == ("d2", "d4", "d1")
    # q4 [d3, d1]: a tie, d3 stays first -> every query has its relevant document first
    assert by_qid["q4"].ranking == ("d3", "d1")
    assert result.metrics["hit@1"] == 1.0


def test_constant_scorer_reproduces_the_first_stage(tmp_path):
    folder = _dataset(tmp_path)
    first = evaluate_reranker(None, folder, "dev")
    flat = evaluate_reranker(FakeScorer({}, default=0.3), folder, "dev")
    assert flat.metrics == first.metrics


def test_top_k_and_max_queries(tmp_path):
    folder = _dataset(tmp_path)
    scorer = FakeScorer({})
    result = evaluate_reranker(scorer, folder, "dev", top_k=1, max_queries=2, ks=(1,))
    assert [len(c) for c in scorer.calls[0][1]] == [1, 1]
    assert [r.qid for r in result.per_query] == ["q1", "q2"]
    assert result.metrics["recall@1"] == 0.0
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        evaluate_reranker(None, folder, "dev", top_k=0)


def test_bm25_candidates(tmp_path):
    ds = load_beir(_dataset(tmp_path), "dev")
    queries, name, skipped = prepare_queries(ds, candidates="bm25", top_k=3)
    assert name == "BM25" and skipped == 1
    by_qid = {q.qid: q for q in queries}
    assert by_qid["q1"].doc_ids == ("d1",)  # the only document that says "apple"
    assert by_qid["q4"].doc_ids == ()  # "fig" matches nothing
    result = evaluate_reranker(None, ds, candidates="bm25", ks=(1,))
    assert result.metrics["hit@1"] == pytest.approx(1 / 3)  # q2 finds d2 first


def test_judged_lists_are_ordered_by_bm25_not_positives_first(tmp_path):
    folder = write_beir(
        tmp_path / "judged",
        corpus={
            "p": {"title": "", "text": "unrelated words entirely"},
            "n": {"title": "", "text": "tea tea tea"},
        },
        queries={"q": "tea"},
        qrels={"dev": {"q": {"p": 1}}},
        candidates={"dev": [{"qid": "q", "pos": ["p"], "neg": ["n"]}]},
    )
    result = evaluate_reranker(None, folder, "dev", ks=(1,))
    assert result.name == "BM25 (over given candidates)"
    assert result.per_query[0].ranking == ("n", "p")  # not ("p", "n") as the file lists them
    assert result.metrics["hit@1"] == 0.0


def test_bm25_ties_in_judged_lists_do_not_follow_the_labels(tmp_path):
    corpus = {f"d{i}": {"title": "", "text": f"unrelated text {i}"} for i in range(8)}
    orders = []
    for name, pos, neg in (("a", ["d0"], ["d1", "d2", "d3"]), ("b", ["d3"], ["d2", "d1", "d0"])):
        folder = write_beir(
            tmp_path / name,
            corpus=corpus,
            queries={"q": "tea"},  # no document matches: every BM25 score is 0
            qrels={"dev": {"q": {pos[0]: 1}}},
            candidates={"dev": [{"qid": "q", "pos": pos, "neg": neg}]},
        )
        orders.append(evaluate_reranker(None, folder, "dev").per_query[0].ranking)
    # the same candidate set gives the same order, whichever document is the positive
    assert orders[0] == orders[1]
    assert sorted(orders[0]) == ["d0", "d1", "d2", "d3"]


def test_given_candidates_required(tmp_path):
    folder = write_beir(
        tmp_path / "nocands",
        corpus=CORPUS,
        queries=QUERIES,
        qrels={"dev": {"q1": {"d1": 1}}},
    )
    with pytest.raises(FileNotFoundError, match="candidates='bm25'"):
        evaluate_reranker(None, folder, "dev", candidates="given")
    assert evaluate_reranker(None, folder, "dev").metrics["hit@1"] == 1.0  # auto -> BM25


def test_bad_scorer_shape_and_type(tmp_path):
    class Broken(FakeScorer):
        def score_many(self, queries, candidates):
            return [[0.0] for _ in candidates]

    with pytest.raises(ValueError, match="wrong shape"):
        evaluate_reranker(Broken({}), _dataset(tmp_path), "dev")
    with pytest.raises(TypeError, match="score_many"):
        evaluate_reranker(42, _dataset(tmp_path), "dev")


def test_compare_models_and_save_reports(tmp_path):
    folder = _dataset(tmp_path)
    good = FakeScorer({"Banana": 0.9, "Cherry": 0.8})
    bad = FakeScorer({"Apple": 0.9, "Date": 0.8})
    comparison = evaluate_models({"good": good, "bad": bad}, folder, "dev", ks=(1, 3))
    assert [r.name for r in comparison.results] == ["BM25", "good", "bad"]
    assert comparison["good"].metrics["hit@1"] == 1.0
    assert comparison["bad"].metrics["hit@1"] == pytest.approx(1 / 3)  # only q4 (d3 alone wins)
    table = comparison.to_markdown()
    assert table.splitlines()[0] == "| metric | BM25 | good | bad |"
    assert "| Hit@1 | 0.333 | **1.000** | 0.333 |" in table
    assert "3 queries (1 without a relevant document skipped)" in table
    paths = comparison.save(tmp_path / "out")
    assert (tmp_path / "out" / "table.md").read_text(encoding="utf-8").startswith("| metric |")
    data = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    assert data["systems"][1]["name"] == "good"
    assert data["systems"][1]["metrics"]["hit@1"] == 1.0
    assert data["systems"][1]["per_query"][0]["ranking"] == ["d2", "d3", "d1"]
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_labels_are_disambiguated(tmp_path):
    comparison = evaluate_models([FakeScorer({}), FakeScorer({})], _dataset(tmp_path), "dev")
    assert [r.name for r in comparison.results] == ["BM25", "fake-ce", "fake-ce (2)"]


def test_prepared_queries_can_be_reused(tmp_path):
    ds = load_beir(_dataset(tmp_path), "dev")
    queries = [EvalQuery("q1", "apple", ("d3", "d2"), {"d2": 1})]
    result = evaluate_reranker(FakeScorer({"Banana": 1.0}), ds, queries=queries, ks=(1,))
    assert result.metrics == {"hit@1": 1.0, "mrr@1": 1.0, "ndcg@1": 1.0, "recall@1": 1.0}


def test_real_scorer_and_cli(tmp_path, tiny_bert, capsys):
    from bge_rerank_plugins import CrossEncoderScorer
    from bge_rerank_plugins.cli import main

    folder = _dataset(tmp_path)
    scorer = CrossEncoderScorer(tiny_bert)
    result = evaluate_reranker(scorer, folder, "dev", show_progress_bar=False)
    assert result.num_pairs == 8
    q1 = result.per_query[0]
    got = dict(zip(q1.ranking, q1.scores or ()))
    texts = [f"{CORPUS[d]['title']}\n{CORPUS[d]['text']}" for d in ("d1", "d2", "d3")]
    # the same scores as scoring the query on its own
    assert [got[d] for d in ("d1", "d2", "d3")] == pytest.approx(
        scorer.score("apple", texts), abs=1e-5
    )
    assert list(q1.scores or ()) == sorted(q1.scores or (), reverse=True)
    assert scorer.show_progress_bar is None  # restored after the call

    out = tmp_path / "cli"
    code = main(
        ["evaluate", "--data", str(folder), "--split", "dev", "--model", f"tiny={tiny_bert}",
         "--model", str(tiny_bert), "--top-k", "2", "--ks", "1,3", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == f"| metric | BM25 | tiny | {tiny_bert.name} |"
    assert (out / "table.md").is_file() and (out / "chart.png").is_file()
    data = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert data["top_k"] == 2 and data["ks"] == [1, 3]
    # both columns are the same model: same metrics
    assert data["systems"][1]["metrics"] == data["systems"][2]["metrics"]


def test_cli_without_models_reports_the_first_stage(tmp_path, capsys):
    from bge_rerank_plugins.cli import main

    assert main(["evaluate", "--data", str(_dataset(tmp_path)), "--ks", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == ["| metric | BM25 |", "|---|---:|", "| Hit@1 | 0.333 |"]


def test_example_builds_a_tiny_folder_with_bm25_lists(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("example_evaluate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ds = load_beir(module.make_tiny_beir(tmp_path / "tiny"), "dev")
    assert len(ds.query_ids) == 12 and len(ds.corpus) == 30
    comparison = evaluate_models({"flat": FakeScorer({})}, ds, ks=(1, 10))
    first, flat = comparison.results
    assert first.metrics == flat.metrics  # a constant scorer keeps the BM25 order
    assert 0 < first.metrics["ndcg@10"] <= 1
