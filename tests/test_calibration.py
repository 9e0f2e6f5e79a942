"""Calibration of reranker scores: Platt and isotonic on known cases, ECE by hand, the file's
round trip, the scorer's ``normalize="calibrated"``, ``fit_fusion`` and the CLI's fit / info."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest

from bge_rerank_plugins.beir import write_beir
from bge_rerank_plugins.calibration import (
    CALIBRATION_FILE,
    ISOTONIC_MIN_PAIRS,
    Calibration,
    CalibrationMissingError,
    IsotonicMap,
    PlattScaling,
    find_calibration,
    fit_isotonic,
    fit_platt,
    sigmoid,
)
from bge_rerank_plugins.config import ScorerConfig
from bge_rerank_plugins.evaluation import (
    LabelledQuery,
    expected_calibration_error,
    fit_calibration,
    fit_fusion,
    plot_reliability,
)
from bge_rerank_plugins.evaluation.calibration_report import reliability
from bge_rerank_plugins.fusion import FusionConfig


# ---------------------------------------------------------------------- the maps
def test_platt_recovers_known_parameters() -> None:
    rng = random.Random(0)
    xs = [rng.gauss(0, 2) for _ in range(20000)]
    ys = [rng.random() < sigmoid(1.5 * x - 0.5) for x in xs]
    fitted = fit_platt(xs, ys)
    assert fitted.a == pytest.approx(1.5, abs=0.08)
    assert fitted.b == pytest.approx(-0.5, abs=0.08)


def test_platt_of_uninformative_scores_is_the_base_rate() -> None:
    # Half relevant whatever the score: a ~ 0 and p ~ 0.5 everywhere.
    xs = [float(i % 10) for i in range(1000)]
    ys = [(i // 10) % 2 == 0 for i in range(1000)]
    fitted = fit_platt(xs, ys)
    assert abs(fitted.a) < 0.02 and fitted(5.0) == pytest.approx(0.5, abs=0.02)


def test_platt_on_separable_data_stays_finite() -> None:
    fitted = fit_platt([-1.0, -0.5, 0.5, 1.0], [0, 0, 1, 1])
    assert math.isfinite(fitted.a) and fitted.a > 0
    assert 0 < fitted(-1.0) < 0.5 < fitted(1.0) < 1  # smoothed targets: never 0 or 1


def test_isotonic_by_hand() -> None:
    # PAV: (1, 1) and (2, 0) violate the order and pool into (1.5, 0.5).
    fitted = fit_isotonic([0.0, 1.0, 2.0, 3.0], [0, 1, 0, 1])
    assert fitted == IsotonicMap(xs=(0.0, 1.5, 3.0), ys=(0.0, 0.5, 1.0))
    assert fitted(-5.0) == 0.0 and fitted(10.0) == 1.0  # flat beyond the ends
    assert fitted(0.75) == pytest.approx(0.25)  # linear between points
    # already monotone: every point kept
    assert fit_isotonic([3.0, 1.0, 2.0], [1, 0, 1]).ys == (0.0, 1.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        IsotonicMap((0.0, 1.0), (1.0, 0.0))


def test_probability_and_methods() -> None:
    cal = Calibration(platt=PlattScaling(2.0, -1.0))
    assert cal.probability(0.5) == 0.5
    mapping = IsotonicMap((0.0, 1.0), (0.2, 0.8))
    iso = Calibration(platt=PlattScaling(1.0, 0.0), isotonic=mapping, method="isotonic")
    assert iso.probabilities([0.5, 2.0]) == pytest.approx([0.5, 0.8])
    with pytest.raises(ValueError, match="needs an isotonic map"):
        Calibration(platt=PlattScaling(1.0, 0.0), method="isotonic")


# ---------------------------------------------------------------------- ECE
def test_ece_by_hand() -> None:
    # bin [0.0, 0.1): mean 0.05, 0 relevant -> 0.05; bin [0.9, 1.0]: mean 0.95, all -> 0.05
    assert expected_calibration_error([0.05, 0.05, 0.95, 0.95], [0, 0, 1, 1]) == 0.05
    # one bin with mean 0.5 and 1 of 4 relevant: |0.5 - 0.25| = 0.25
    assert expected_calibration_error([0.5] * 4, [1, 0, 0, 0]) == 0.25
    assert expected_calibration_error([], []) == 0.0
    assert reliability([1.0], [True], bins=10)[-1] == (0.9, 1.0, 1, 1.0, 1.0)


def test_fit_calibration_uses_isotonic_only_with_enough_data(tmp_path: Path) -> None:
    rng = random.Random(1)

    def data(queries: int) -> tuple[list[list[float]], list[list[bool]]]:
        raw = [[rng.gauss(0, 2) for _ in range(20)] for _ in range(queries)]
        # relevance follows a step, which isotonic fits and a logistic does not
        labels = [[rng.random() < (0.9 if x > 1 else 0.05) for x in q] for q in raw]
        return raw, labels

    small_raw, small_labels = data(10)  # 200 pairs: below the threshold
    small, report = fit_calibration(small_raw, small_labels, folds=5)
    assert small.isotonic is None and small.method == "platt"
    assert set(report.probabilities) == {"sigmoid", "platt", "beta"}
    big_raw, big_labels = data(ISOTONIC_MIN_PAIRS // 20 + 10)
    big, report = fit_calibration(big_raw, big_labels, folds=5)
    assert big.isotonic is not None
    assert report.ece["isotonic"] < report.ece["sigmoid"]
    assert big.method in ("platt", "beta", "isotonic") and big.method == report.chosen
    assert "held-out ECE" in report.summary()
    png = plot_reliability(report.probabilities, report.labels, tmp_path / "reliability.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="relevant and non-relevant"):
        fit_calibration([[1.0, 2.0], [3.0]], [[False, False], [False]])


# ---------------------------------------------------------------------- the file
def test_the_file_round_trips(tmp_path: Path) -> None:
    cal = Calibration(
        platt=PlattScaling(1.25, -0.5),
        isotonic=IsotonicMap((0.0, 1.0, 2.0), (0.1, 0.4, 0.9)),
        method="isotonic",
        fusion=FusionConfig(method="rrf", weight=0.7),
        info={"dataset": "tiny", "queries": 3},
    )
    path = cal.save(tmp_path)
    assert path == tmp_path / CALIBRATION_FILE
    assert json.loads(path.read_text(encoding="utf-8"))["schema_version"] == 1
    again = Calibration.load(tmp_path)
    assert again == cal and again.info == {"dataset": "tiny", "queries": 3}
    assert again.probability(0.5) == cal.probability(0.5)
    assert find_calibration(str(tmp_path)) == cal
    assert find_calibration(str(tmp_path / "elsewhere")) is None
    assert find_calibration("no-such/hub-model") is None  # never a download


def test_bad_files_are_refused_by_path(tmp_path: Path) -> None:
    path = tmp_path / CALIBRATION_FILE
    data = Calibration(platt=PlattScaling(1.0, 0.0)).to_dict()
    path.write_text(json.dumps({**data, "schema_version": 99}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"schema_version 99 is not one this version reads"):
        Calibration.load(path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{CALIBRATION_FILE}: not a valid calibration file"):
        Calibration.load(tmp_path)
    path.write_text(json.dumps({"schema_version": 1}), encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid calibration file"):
        Calibration.load(path)


# ---------------------------------------------------------------------- the scorer
def test_config_accepts_calibrated_only_as_that_string() -> None:
    assert ScorerConfig(normalize="calibrated").normalize == "calibrated"
    with pytest.raises(TypeError, match="'calibrated'"):
        ScorerConfig(normalize="calibrate")


@pytest.fixture
def calibrated_model(tiny_bert: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    Calibration(platt=PlattScaling(3.0, 1.0), fusion=FusionConfig(weight=0.25)).save(folder)
    return folder


def test_calibrated_scores_are_the_calibration_of_the_raw_ones(calibrated_model: Path) -> None:
    from bge_rerank_plugins import CrossEncoderScorer

    query, passages = "panda food", ["Pandas eat bamboo.", "A Python library.", "Beijing."]
    scorer = CrossEncoderScorer(calibrated_model)  # loaded even with normalize=True
    assert scorer.calibration is not None and scorer.calibration.fusion == FusionConfig(weight=0.25)
    raw = scorer.score(query, passages, normalize=False)
    want = [sigmoid(3.0 * x + 1.0) for x in raw]
    assert scorer.score(query, passages, normalize="calibrated") == pytest.approx(want)
    calibrated = CrossEncoderScorer(calibrated_model, normalize="calibrated")
    assert calibrated.score(query, passages) == pytest.approx(want)
    ranked = calibrated.rank(query, passages)
    assert [r.score for r in ranked] == pytest.approx(sorted(want, reverse=True))
    assert [r.index for r in ranked] == [r.index for r in scorer.rank(query, passages)]


def test_calibrated_without_a_file_is_a_clear_error(tiny_bert: Path) -> None:
    from bge_rerank_plugins import CrossEncoderScorer

    message = rf"has no {CALIBRATION_FILE}.*bge-rerank fit"
    with pytest.raises(CalibrationMissingError, match=message):
        CrossEncoderScorer(tiny_bert, normalize="calibrated")
    scorer = CrossEncoderScorer(tiny_bert)
    assert scorer.calibration is None
    with pytest.raises(CalibrationMissingError, match="normalize='calibrated'"):
        scorer.score("q", ["p"], normalize="calibrated")
    with pytest.raises(CalibrationMissingError):
        scorer.rank("q", ["p"], normalize="calibrated")


# ---------------------------------------------------------------------- fit_fusion + CLI
def _folder(tmp_path: Path, n: int = 12) -> Path:
    corpus, queries, qrels, candidates = {}, {}, {}, []
    words = ["panda", "bamboo", "python", "beijing", "river", "stone"]
    for q in range(n):
        ids = [f"q{q}d{j}" for j in range(5)]
        for j, d in enumerate(ids):
            corpus[d] = {"title": words[(q + j) % 6], "text": f"{words[j % 6]} {words[q % 6]}"}
        queries[f"q{q}"] = f"{words[q % 6]} question"
        qrels[f"q{q}"] = {ids[(q % 4) + 1]: 1}
        candidates.append({"qid": f"q{q}", "pos": [ids[(q % 4) + 1]], "neg": [], "ranked": ids})
    return write_beir(
        tmp_path / "data", corpus=corpus, queries=queries, qrels={"dev": qrels},
        candidates={"dev": candidates},
    )  # fmt: skip


def test_fit_fusion_on_a_beir_folder_saves_what_the_scorer_loads(
    tiny_bert: Path, tmp_path: Path
) -> None:
    from bge_rerank_plugins import CrossEncoderScorer

    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    result = fit_fusion(str(model), _folder(tmp_path), "dev", folds=3, seed=1)
    assert result.fusion.folds == 3 and len(result.fusion.heldout_values) == 12
    assert 0 <= result.fusion.heldout <= 1
    assert result.calibration.fusion == result.fusion.config
    info = result.calibration.info
    assert info["queries"] == 12 and info["top_k"] == 30 and info["split"] == "dev"
    assert info["calibration_fit"]["pairs"] == 60
    assert "held-out ndcg@10" in result.summary()
    path = result.save(model)
    scorer = CrossEncoderScorer(model, normalize="calibrated")
    assert scorer.calibration == Calibration.load(path)
    assert all(0 < p < 1 for p in scorer.score("panda question", ["panda", "stone"]))


def test_fit_fusion_on_labelled_queries(tiny_bert: Path) -> None:
    data = [
        LabelledQuery(f"question {i}", [f"answer {i}", "noise", f"other {i}"], [1, 0, 0], [3, 2, 1])
        for i in range(6)
    ]
    result = fit_fusion(str(tiny_bert), data, folds=2)
    assert len(result.fusion.heldout_values) == 6
    assert result.fusion.first_stage == 1.0  # the labelled first stage is perfect here
    with pytest.raises(TypeError, match=r"data\[0\] must be a LabelledQuery"):
        fit_fusion(str(tiny_bert), [("q", ["p"], [1])])  # type: ignore[list-item]


def test_cli_fit_then_info(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    from bge_rerank_plugins.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    assert main(["info", str(model)]) == 0
    assert "calibration: none" in capsys.readouterr().out
    data = _folder(tmp_path)
    argv = ["fit", "--model", str(model), "--data", str(data), "--folds", "3"]
    png = tmp_path / "rel.png"
    assert main([*argv, "--reliability", str(png)]) == 0
    out = capsys.readouterr().out
    assert "held-out ndcg@10" in out and f"wrote {model / CALIBRATION_FILE}" in out
    assert png.is_file() and (model / CALIBRATION_FILE).is_file()
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "calibration: " in out and "fusion: " in out and "held-out ndcg@10" in out
    assert main(["info", str(model), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)["calibration"]
    assert facts["schema_version"] == (2 if facts["method"] == "beta" else 1)
    # a Hub id cannot take the file: --out or --dry-run is needed, said before loading
    assert main(["fit", "--model", "BAAI/bge-reranker-base", "--data", str(data)]) == 1
    assert "--out" in capsys.readouterr().err
    assert main([*argv, "--folds", "1"]) == 1
    assert "at least 2 folds" in capsys.readouterr().err


def test_cli_score_calibrated(calibrated_model: Path, capsys) -> None:
    from bge_rerank_plugins import CrossEncoderScorer
    from bge_rerank_plugins.cli import main

    passages = ["Pandas eat bamboo.", "A Python library."]
    assert main(["score", "--model", str(calibrated_model), "--query", "panda", *passages,
                 "--calibrated"]) == 0  # fmt: skip
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = CrossEncoderScorer(calibrated_model, normalize="calibrated").score("panda", passages)
    assert sorted(r["score"] for r in printed) == pytest.approx(sorted(want))


def test_cli_fit_calibration_method_flag(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    from bge_rerank_plugins.cli import main

    data, out = _folder(tmp_path), tmp_path / "out"
    argv = ["fit", "--model", str(tiny_bert), "--data", str(data), "--folds", "3", "--out"]
    assert main([*argv, str(out), "--calibration-method", "beta"]) == 0
    assert "using beta (asked for)" in capsys.readouterr().out
    saved = Calibration.load(out)
    assert saved.method == "beta" and saved.beta is not None
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "calibration: beta (schema 2)" in printed and f"beta: a={saved.beta.a:.4g}" in printed
    assert "held-out log loss: " in printed
    with pytest.raises(SystemExit):
        main([*argv, str(out), "--calibration-method", "temperature"])
