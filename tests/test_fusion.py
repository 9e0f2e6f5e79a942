"""Fusion with the first stage: the pure functions on hand-made cases, the scorer's rank hook,
the cross-validated weight, the paired test and the verdict in evaluate_models / the CLI."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest

from bge_rerank_plugins.beir import write_beir
from bge_rerank_plugins.evaluation import (
    FusionSample,
    cross_validate_fusion,
    evaluate_models,
    paired_test,
    verdict,
)
from bge_rerank_plugins.fusion import FusionConfig, fuse, fused_order, minmax, ranks, zscore
from bge_rerank_plugins.ranking import Ranked


# ---------------------------------------------------------------------- pure functions
def test_normalisations_and_ranks_by_hand() -> None:
    assert minmax([2.0, 4.0, 3.0]) == [0.0, 1.0, 0.5]
    assert minmax([7.0, 7.0]) == [0.5, 0.5]  # a constant list has no preference
    assert minmax([]) == []
    assert zscore([1.0, 3.0]) == [-1.0, 1.0]
    assert zscore([5.0, 5.0, 5.0]) == [0.0, 0.0, 0.0]
    assert ranks([0.2, 0.9, 0.2, 0.5]) == [3, 1, 4, 2]  # ties: input order


def test_blend_by_hand() -> None:
    reranker, first = [0.0, 4.0, 2.0], [10.0, 0.0, 5.0]
    # minmax: reranker [0, 1, .5], first stage [1, 0, .5]
    got = fuse(reranker, first, FusionConfig(method="blend", weight=0.75))
    assert got == pytest.approx([0.25, 0.75, 0.5])
    assert fused_order(reranker, first, FusionConfig(weight=0.75)) == [1, 2, 0]
    # all three tie at w = 0.5: the first stage's order decides
    assert fused_order(reranker, first, FusionConfig(weight=0.5)) == [0, 2, 1]
    # the ends are the two systems
    assert fused_order(reranker, first, FusionConfig(weight=1.0)) == [1, 2, 0]
    assert fused_order(reranker, first, FusionConfig(weight=0.0)) == [0, 2, 1]
    # z-score: reranker [-1.2247, 1.2247, 0], first [1.2247, -1.2247, 0]
    z = fuse(reranker, first, FusionConfig(weight=1.0, normalization="zscore"))
    assert z == pytest.approx([-1.224745, 1.224745, 0.0], abs=1e-6)


def test_blend_scale_does_not_matter_with_minmax() -> None:
    """Min-max makes the weight independent of each system's score scale."""
    config = FusionConfig(weight=0.6)
    a = fuse([1.0, 2.0, 3.0], [30.0, 10.0, 20.0], config)
    b = fuse([100.0, 200.0, 300.0], [0.3, 0.1, 0.2], config)
    assert a == pytest.approx(b)


def test_rrf_by_hand() -> None:
    # reranker ranks [3, 1, 2]; first stage = the input order, ranks [1, 2, 3]
    got = fuse([0.1, 0.9, 0.5], None, FusionConfig(method="rrf", weight=0.5, rrf_k=60))
    want = [0.5 / 63 + 0.5 / 61, 0.5 / 61 + 0.5 / 62, 0.5 / 62 + 0.5 / 63]
    assert got == pytest.approx(want)
    # ranks given instead of scores mean the same thing
    by_ranks = fuse([0.1, 0.9, 0.5], None, FusionConfig(method="rrf"), first_stage_ranks=[1, 2, 3])
    assert by_ranks == pytest.approx(got)
    # a different first-stage order changes the result
    other = fuse([0.1, 0.9, 0.5], [0.0, 1.0, 2.0], FusionConfig(method="rrf"))
    assert other != pytest.approx(got)


def test_blend_without_first_stage_scores_uses_the_rank() -> None:
    # first-stage "score" = -rank: [-1, -2, -3] -> minmax [1, .5, 0]
    got = fuse([0.0, 0.0, 1.0], None, FusionConfig(weight=0.5))
    assert got == pytest.approx([0.5, 0.25, 0.5])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weight": 1.5}, ValueError, r"weight must be within \[0, 1\]"),
        ({"weight": -0.1}, ValueError, r"weight must be within"),
        ({"weight": True}, TypeError, r"weight must be a number"),
        ({"weight": float("nan")}, ValueError, r"weight must be a finite number"),
        ({"method": "sum"}, ValueError, r"method must be one of \('rrf', 'blend'\)"),
        ({"normalization": "l2"}, ValueError, r"normalization must be one of"),
        ({"rrf_k": 0}, ValueError, r"rrf_k must be > 0"),
    ],
)
def test_fusion_config_refuses_bad_values(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        FusionConfig(**kwargs)


def test_fuse_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="first_stage_scores has 1 values for 2"):
        fuse([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="not both"):
        fuse([1.0, 2.0], [1.0, 2.0], first_stage_ranks=[1, 2])
    with pytest.raises(ValueError, match=r"permutation of 1\.\.2"):
        fuse([1.0, 2.0], first_stage_ranks=[1, 1])
    with pytest.raises(TypeError, match="config must be a FusionConfig"):
        fuse([1.0], None, {"method": "rrf"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"reranker_scores\[1\] must be a finite number"):
        fuse([1.0, float("inf")])


def test_fusion_config_round_trips_and_is_frozen() -> None:
    config = FusionConfig(method="rrf", weight=0.3, rrf_k=20)
    assert FusionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert hash(config) == hash(dataclasses.replace(config))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.weight = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown fusion settings"):
        FusionConfig.from_dict({"method": "rrf", "wieght": 0.5})
    assert config.describe() == "rrf w=0.30 k=20"


# ---------------------------------------------------------------------- Ranked, rank()
def test_ranked_is_still_the_three_tuple() -> None:
    r = Ranked(2, 0.9, "c", reranker_score=1.5, first_stage_score=7.0, fused_score=0.9)
    index, score, passage = r
    assert (index, score, passage) == (2, 0.9, "c") and len(r) == 3
    assert r == (2, 0.9, "c") and r.score == r[1]
    extra = (r.reranker_score, r.first_stage_score, r.fused_score, r.reranked)
    assert extra == (1.5, 7.0, 0.9, True)
    again = pickle.loads(pickle.dumps(r))
    assert again.first_stage_score == 7.0 and again.reranked is True
    plain = Ranked(0, 0.4, "a")
    assert plain.reranker_score == 0.4 and plain.fused_score is None
    assert repr(plain) == "Ranked(index=0, score=0.4, passage='a')"
    assert plain._replace(score=0.1).reranked is True  # class-level defaults


QUERY = "what do giant pandas eat?"
PASSAGES = [
    "Pandas is a Python library.",
    "The giant panda eats bamboo.",
    "Beijing is in China.",
    "Bamboo grows fast.",
]


def test_rank_fuses_with_first_stage_scores(tiny_bert: Path) -> None:
    from bge_rerank_plugins import CrossEncoderScorer

    scorer = CrossEncoderScorer(tiny_bert)
    raw = scorer.score(QUERY, PASSAGES, normalize=False)
    sig = scorer.score(QUERY, PASSAGES)
    first = [4.0, 3.0, 2.0, 1.0]
    config = FusionConfig(method="blend", weight=0.5)
    ranked = scorer.rank(QUERY, PASSAGES, first_stage_scores=first, fusion=config)
    assert [r.index for r in ranked] == fused_order(raw, first, config)
    want = fuse(raw, first, config)
    for r in ranked:
        assert r.score == pytest.approx(want[r.index]) and r.fused_score == r.score
        assert r.reranker_score == pytest.approx(sig[r.index])  # in the scorer's normalize mode
        assert r.first_stage_score == first[r.index] and r.reranked is True
    # weight 0: the first stage's order; weight 1: the reranker's order
    zero = scorer.rank(QUERY, PASSAGES, first_stage_scores=first, fusion=FusionConfig(weight=0.0))
    assert [r.index for r in zero] == [0, 1, 2, 3]
    one = scorer.rank(QUERY, PASSAGES, first_stage_scores=first, fusion=FusionConfig(weight=1.0))
    assert [r.index for r in one] == [r.index for r in scorer.rank(QUERY, PASSAGES)]
    # without fusion the items still say which score is which
    plain = scorer.rank(QUERY, PASSAGES, first_stage_scores=first, top_k=2)
    assert len(plain) == 2 and plain[0].fused_score is None
    assert plain[0].first_stage_score == first[plain[0].index]
    assert plain[0].reranker_score == plain[0].score
    # rrf without first-stage scores: the input order is the first stage
    rrf = scorer.rank(QUERY, PASSAGES, fusion=FusionConfig(method="rrf"))
    assert [r.index for r in rrf] == fused_order(raw, None, FusionConfig(method="rrf"))


def test_rank_refuses_bad_fusion_arguments(tiny_bert: Path) -> None:
    from bge_rerank_plugins import CrossEncoderScorer

    scorer = CrossEncoderScorer(tiny_bert)
    with pytest.raises(TypeError, match="fusion must be a FusionConfig"):
        scorer.rank(QUERY, PASSAGES, fusion="rrf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one finite number per passage"):
        scorer.rank(QUERY, PASSAGES, first_stage_scores=[1.0])
    with pytest.raises(ValueError, match="top_k must be a non-negative int"):
        scorer.rank(QUERY, PASSAGES, top_k=-1)


# ---------------------------------------------------------------------- learning the weight
def _samples(n: int, reranker_good: bool) -> list[FusionSample]:
    """First stage: the relevant document 2nd of 3; the reranker puts it 1st (or last)."""
    out = []
    for i in range(n):
        ids = (f"a{i}", f"r{i}", f"b{i}")
        scores = (0.0, 5.0, 1.0) if reranker_good else (3.0, -5.0, 1.0)
        out.append(FusionSample(f"q{i}", ids, scores, (3.0, 2.0, 1.0), {f"r{i}": 1}))
    return out


def test_cross_validation_finds_the_better_system() -> None:
    bad = cross_validate_fusion(_samples(10, reranker_good=False), method="blend", folds=5)
    assert bad.reranker < bad.first_stage
    assert bad.heldout == pytest.approx(bad.first_stage)  # fusion falls back to the first stage
    assert bad.config.weight < 0.5
    good = cross_validate_fusion(_samples(10, reranker_good=True), method="auto", folds=5)
    assert good.heldout == pytest.approx(1.0) and good.first_stage < 1.0
    assert good.config.weight > 0.5
    assert len(good.fold_configs) == 5 and len(good.heldout_orders) == 10
    assert good.heldout_orders[0][0] == "r0"
    assert "held-out ndcg@10" in good.summary()


def test_the_reported_figure_is_the_held_out_one() -> None:
    """Two queries that want opposite weights: in-sample looks perfect, held-out does not."""
    samples = [
        FusionSample("q1", ("a", "b"), (0.0, 3.0), None, {"b": 1}),  # wants the reranker
        FusionSample("q2", ("c", "d"), (3.0, 0.0), (0.0, 1.0), {"c": 1}),  # wants it too
        FusionSample("q3", ("e", "f"), (0.0, 3.0), None, {"e": 1}),  # wants the first stage
    ]
    fit = cross_validate_fusion(samples, method="blend", folds=3)
    assert fit.heldout < fit.fitted
    assert fit.to_dict()["folds"] == 3
    with pytest.raises(ValueError, match="at least 2 labelled queries"):
        cross_validate_fusion(samples[:1])
    with pytest.raises(ValueError, match="method must be 'auto' or one of"):
        cross_validate_fusion(samples, method="sum")


# ---------------------------------------------------------------------- significance
def test_identical_runs_have_p_one() -> None:
    values = [0.1 * (i % 7) for i in range(30)]
    test = paired_test(values, values, seed=3)
    assert test.p_value == 1.0 and test.difference == 0.0
    assert (test.ci_low, test.ci_high) == (0.0, 0.0)


def test_a_run_better_on_every_query_is_significant() -> None:
    base = [0.1 * (i % 7) for i in range(30)]
    better = [v + 0.05 + 0.01 * (i % 3) for i, v in enumerate(base)]
    test = paired_test(better, base, seed=0)
    assert test.p_value < 0.01
    assert test.difference == pytest.approx(0.06)
    assert test.ci_low <= 0.06 <= test.ci_high and test.ci_low > 0.05 - 1e-9
    assert paired_test(better, base, seed=0) == test  # seeded
    assert paired_test(base, better).difference == pytest.approx(-0.06)
    with pytest.raises(ValueError, match="one value per query"):
        paired_test([1.0], [1.0, 2.0])


def test_a_noisy_difference_is_not_significant() -> None:
    base = [0.5] * 30
    noisy = [0.5 + (0.1 if i % 2 else -0.1) for i in range(30)]
    test = paired_test(noisy, base, seed=1)
    assert test.p_value > 0.5 and test.ci_low < 0 < test.ci_high


def test_verdict_texts() -> None:
    helps = verdict("ce", [0.9] * 30, "BM25", [0.1] * 30)
    assert helps.text.startswith("ce: reranking helps here (+0.800 nDCG@10, 95% CI [")
    hurts = verdict(
        "ce", [0.2] * 30, "BM25", [0.5] * 30, fused="ce+", fused_values=[0.6] * 30,
        fusion_label="blend w=0.30",
    )  # fmt: skip
    assert hurts.text.startswith("ce: it does not (-0.300 nDCG@10")
    assert "use fusion (blend w=0.30) (+0.100 nDCG@10" in hurts.text
    assert hurts.to_dict()["fused_test"]["difference"] == pytest.approx(0.1)


# ---------------------------------------------------------------------- evaluate_models
CORPUS = {f"d{i}": {"title": f"T{i}", "text": f"text {i}"} for i in range(40)}


def _folder(tmp_path: Path) -> Path:
    """10 queries, 4 ranked candidates each; the relevant one is 3rd in the first stage."""
    queries, qrels, candidates = {}, {}, []
    for q in range(10):
        ids = [f"d{4 * q + j}" for j in range(4)]
        queries[f"q{q}"] = f"query {q}"
        qrels[f"q{q}"] = {ids[2]: 1}
        negatives = ids[:2] + ids[3:]
        candidates.append({"qid": f"q{q}", "pos": [ids[2]], "neg": negatives, "ranked": ids})
    return write_beir(
        tmp_path / "data",
        corpus=CORPUS,
        queries=queries,
        qrels={"dev": qrels},
        candidates={"dev": candidates},
    )


class TitleScorer:
    """A duck-typed reranker: a score per title (no normalize keyword: scores used as they are)."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores
        self.model_name = "title-ce"
        self.template = None

    def score_many(self, queries, candidates):
        return [[self.scores.get(t.split("\n")[0], 0.0) for t in c] for c in candidates]


def test_evaluate_models_reports_the_fused_run_and_the_verdicts(tmp_path: Path) -> None:
    good = TitleScorer({f"T{4 * q + 2}": 1.0 for q in range(10)})
    flat = TitleScorer({})
    comparison = evaluate_models(
        {"good": good, "flat": flat}, _folder(tmp_path), ks=(1, 10), fusion="auto", folds=5
    )
    names = [r.name for r in comparison.results]
    assert names == ["BM25", "good", "good + fusion (CV)", "flat", "flat + fusion (CV)"]
    kinds = [r.kind for r in comparison.results]
    assert kinds == ["first stage", "reranker", "fused", "reranker", "fused"]
    assert comparison["good"].metrics["ndcg@10"] == 1.0
    assert comparison["good + fusion (CV)"].metrics["ndcg@10"] == 1.0
    assert comparison["flat + fusion (CV)"].metrics == comparison["BM25"].metrics
    good_verdict, flat_verdict = comparison.verdicts
    assert good_verdict.text.startswith("good: reranking helps here (+")
    assert good_verdict.test.p_value < 0.01
    assert flat_verdict.text.startswith("flat: it does not (+0.000 nDCG@10")
    assert flat_verdict.text.endswith("skip it")
    table = comparison.to_markdown()
    assert "- good: reranking helps here" in table
    paths = comparison.save(tmp_path / "out")
    data = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    assert [s["kind"] for s in data["systems"]][:3] == ["first stage", "reranker", "fused"]
    assert data["verdicts"][0]["system"] == "good"
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_models_with_a_fixed_fusion(tmp_path: Path) -> None:
    good = TitleScorer({f"T{4 * q + 2}": 1.0 for q in range(10)})
    comparison = evaluate_models(
        {"good": good}, _folder(tmp_path), ks=(1,), fusion=FusionConfig(weight=0.0)
    )
    fused = comparison["good + fusion (blend w=0.00)"]
    assert fused.metrics == comparison["BM25"].metrics  # weight 0 is the first stage
    assert fused.per_query[0].scores is not None
    assert "blend w=0.00" in comparison.verdicts[0].text or comparison.verdicts[0].fused
    # fusion=None (the default) keeps the columns as they were
    plain = evaluate_models({"good": good}, _folder(tmp_path), ks=(1,))
    assert [r.name for r in plain.results] == ["BM25", "good"]


def test_cli_evaluate_with_fusion(tmp_path: Path, tiny_bert: Path, capsys) -> None:
    from bge_rerank_plugins.cli import main

    folder = _folder(tmp_path)
    argv = ["evaluate", "--data", str(folder), "--model", f"tiny={tiny_bert}", "--ks", "1,10"]
    assert main([*argv, "--fusion", "blend", "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "| metric | BM25 | tiny | tiny + fusion (CV) |"
    assert "- tiny: " in out and "nDCG@10, 95% CI" in out
    assert main([*argv, "--fusion", "rrf", "--fusion-weight", "0.3"]) == 0
    assert "tiny + fusion (rrf w=0.30 k=60)" in capsys.readouterr().out
    assert main([*argv, "--fusion-weight", "3"]) == 1
    assert "--fusion-weight 3.0" in capsys.readouterr().err


# ---------------------------------------------------------------------- docstring examples
@pytest.mark.parametrize(
    "name",
    [
        "bge_rerank_plugins.fusion",
        "bge_rerank_plugins.calibration",
        "bge_rerank_plugins.ranking",
        "bge_rerank_plugins.runtime.deadline",
        "bge_rerank_plugins.evaluation.fusion_fit",
        "bge_rerank_plugins.evaluation.fused",
        "bge_rerank_plugins.evaluation.significance",
        "bge_rerank_plugins.evaluation.calibration_report",
    ],
)
def test_docstring_examples(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
