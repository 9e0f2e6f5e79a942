"""Beta calibration (known answers, the negative-slope fallback, no overflow, monotone, the
file), the fit's choice of method by held-out log loss, and the threshold figures by hand."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from bge_rerank_plugins.calibration import (
    CALIBRATION_FILE,
    BetaCalibration,
    Calibration,
    PlattScaling,
    convert_scores,
    fit_beta,
    fit_platt,
    sigmoid,
)
from bge_rerank_plugins.evaluation import fit_calibration
from bge_rerank_plugins.evaluation.calibration_report import (
    CalibrationReport,
    log_loss,
    threshold_figures,
)


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _sample(truth, n: int, seed: int, mu: float = 0.0, sd: float = 3.0):
    rng = random.Random(seed)
    xs = [rng.gauss(mu, sd) for _ in range(n)]
    return xs, [rng.random() < truth(x) for x in xs]


# ---------------------------------------------------------------------- the map and its fit
def test_beta_map_by_hand() -> None:
    # a = b = 1, c = 0 is the plain sigmoid; a = b = m is Platt with slope m
    assert BetaCalibration(1.0, 1.0, 0.0)(0.7) == pytest.approx(sigmoid(0.7))
    assert BetaCalibration(2.0, 2.0, -1.0)(0.3) == pytest.approx(PlattScaling(2.0, -1.0)(0.3))
    # log-odds = c + a log s - b log(1 - s) at s = sigmoid(z)
    z, cal = 1.3, BetaCalibration(0.5, 2.0, -0.4)
    s = sigmoid(z)
    assert cal(z) == pytest.approx(sigmoid(-0.4 + 0.5 * math.log(s) - 2.0 * math.log(1 - s)))
    with pytest.raises(ValueError, match="a, b >= 0"):
        BetaCalibration(-0.1, 1.0, 0.0)


def test_fit_beta_recovers_known_parameters() -> None:
    truth = BetaCalibration(0.5, 2.0, -1.0)
    fitted = fit_beta(*_sample(truth, 40000, seed=0))
    assert fitted.a == pytest.approx(0.5, abs=0.1)
    assert fitted.b == pytest.approx(2.0, abs=0.15)
    assert fitted.c == pytest.approx(-1.0, abs=0.15)


def test_fit_beta_on_sigmoid_data_is_platt() -> None:
    xs, ys = _sample(lambda x: sigmoid(1.5 * x - 0.5), 20000, seed=1)
    beta, platt = fit_beta(xs, ys), fit_platt(xs, ys)
    assert beta.a == pytest.approx(beta.b, abs=0.15)  # one slope: a = b
    assert beta.a == pytest.approx(platt.a, abs=0.15)
    assert max(abs(beta(x) - platt(x)) for x in (-4, -1, 0, 1, 4)) < 0.02


def test_a_negative_slope_falls_back_to_the_other_feature_alone() -> None:
    # U-shaped truth (a < 0): the fit fixes a = 0 and refits b, c on -log(1 - s) alone, which
    # is Platt scaling on the feature softplus(z): the same smoothed targets, the same answer.
    xs, ys = _sample(lambda x: sigmoid(-1.0 * -_softplus(-x) + 2.0 * _softplus(x) - 3.0), 20000, 2)
    fitted = fit_beta(xs, ys)
    alone = fit_platt([_softplus(x) for x in xs], ys)
    assert fitted.a == 0.0
    assert fitted.b == pytest.approx(alone.a, abs=1e-3)
    assert fitted.c == pytest.approx(alone.b, abs=1e-3)
    # mirrored (b < 0): b = 0 and a, c from log s alone
    xs, ys = _sample(lambda x: sigmoid(2.0 * -_softplus(-x) - 1.0 * _softplus(x) + 1.0), 20000, 3)
    fitted = fit_beta(xs, ys)
    alone = fit_platt([-_softplus(-x) for x in xs], ys)
    assert fitted.b == 0.0 and fitted.a == pytest.approx(alone.a, abs=1e-3)
    # scores that point the wrong way: no monotone slope at all, only the base rate
    anti = fit_beta([-2.0, -1.0, 0.0, 1.0, 2.0], [1, 1, 1, 0, 0])
    assert anti.a == 0.0 and anti.b == 0.0
    assert anti(-5.0) == anti(5.0) == pytest.approx((3 + 1) / (5 + 2), abs=0.03)


def test_beta_is_finite_and_monotone_for_huge_scores() -> None:
    cal = BetaCalibration(0.7, 2.5, -1.0)
    grid = [-1e4, -1e3, -30.0, -1.0, 0.0, 1.0, 30.0, 1e3, 1e4]
    values = [cal(x) for x in grid]
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values)
    assert BetaCalibration(0.0, 1.0, 0.0)(-1e4) == pytest.approx(0.5)  # a = 0: flat below
    fitted = fit_beta([-1e4, -5e3, -1.0, 1.0, 5e3, 1e4], [0, 0, 0, 1, 1, 1])
    assert all(math.isfinite(v) for v in (fitted.a, fitted.b, fitted.c))
    assert fitted(-1e4) < 0.5 < fitted(1e4)
    rng = random.Random(4)
    xs, ys = _sample(BetaCalibration(0.3, 3.0, -2.0), 5000, 4)
    fitted = fit_beta(xs, ys)
    probe = sorted(rng.uniform(-20, 20) for _ in range(500))
    out = [fitted(x) for x in probe]
    assert out == sorted(out)


# ---------------------------------------------------------------------- the file
def test_beta_round_trips_and_old_files_still_load(tmp_path: Path) -> None:
    cal = Calibration(
        platt=PlattScaling(1.2, -0.3), beta=BetaCalibration(0.4, 2.2, -1.1), method="beta"
    )
    path = cal.save(tmp_path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["schema_version"] == 2 and data["beta"] == {"a": 0.4, "b": 2.2, "c": -1.1}
    again = Calibration.load(tmp_path)
    assert again == cal and again.probability(0.5) == cal.probability(0.5)
    assert convert_scores([0.5, 3.0], "calibrated", again) == cal.probabilities([0.5, 3.0])
    # a Platt file with a beta map stays version 1: older releases read it
    platt_file = Calibration(platt=cal.platt, beta=cal.beta).to_dict()
    assert platt_file["schema_version"] == 1
    # a file written before beta existed: no "beta" key
    old = {"schema_version": 1, "method": "platt", "platt": {"a": 1.0, "b": 0.0},
           "isotonic": None, "fusion": None, "info": {}}  # fmt: skip
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(old), encoding="utf-8")
    loaded = Calibration.load(tmp_path)
    assert loaded.beta is None and loaded.probability(0.0) == 0.5
    with pytest.raises(ValueError, match="needs a beta map"):
        Calibration(platt=cal.platt, method="beta")
    with pytest.raises(ValueError, match="method must be one of"):
        Calibration(platt=cal.platt, method="temperature")


def test_calibrated_scorer_uses_beta(tiny_bert: Path, tmp_path: Path) -> None:
    import shutil

    from bge_rerank_plugins import CrossEncoderScorer

    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    beta = BetaCalibration(0.5, 3.0, 1.0)
    Calibration(platt=PlattScaling(1.0, 0.0), beta=beta, method="beta").save(model)
    passages = ["panda bamboo", "stone river"]
    raw = CrossEncoderScorer(model, normalize=False).score("panda", passages)
    calibrated = CrossEncoderScorer(model, normalize="calibrated").score("panda", passages)
    assert calibrated == pytest.approx([beta(x) for x in raw])


# ---------------------------------------------------------------------- the choice
def _queries(truth, queries: int, seed: int, per: int = 30):
    rng = random.Random(seed)
    raw = [[rng.gauss(-4.0, 3.0) for _ in range(per)] for _ in range(queries)]
    return raw, [[rng.random() < truth(x) for x in q] for q in raw]


def test_the_fit_chooses_beta_where_platt_is_under_confident_at_the_top() -> None:
    # steep above 0, shallow below: one Platt slope is too flat for the top scores
    raw, labels = _queries(BetaCalibration(0.5, 2.5, -2.0), 100, seed=0)
    calibration, report = fit_calibration(raw, labels, folds=5, seed=0)
    assert calibration.method == report.chosen == "beta"
    assert report.log_loss["beta"] < report.log_loss["platt"]
    assert report.threshold["beta"]["gap"] < report.threshold["platt"]["gap"]
    assert "CV log loss" in report.choice and "beta" in report.summary()
    fit = report.to_dict()
    assert fit["chosen"] == "beta" and set(fit["log_loss_heldout"]) >= {"platt", "beta"}
    assert set(fit["threshold_0.5"]["beta"]) == {"kept", "precision", "mean_probability", "gap"}


def test_the_fit_chooses_platt_on_sigmoid_data_and_obeys_an_explicit_method() -> None:
    raw, labels = _queries(lambda x: sigmoid(0.9 * x - 1.0), 100, seed=0)
    calibration, report = fit_calibration(raw, labels, folds=5, seed=0)
    assert calibration.method == "platt" and calibration.beta is not None
    forced, report = fit_calibration(raw, labels, folds=5, seed=0, method="beta")
    assert forced.method == "beta" and report.choice == "asked for"
    small_raw, small_labels = raw[:5], labels[:5]  # 150 pairs: isotonic only when asked for
    auto, _ = fit_calibration(small_raw, small_labels, folds=5)
    assert auto.isotonic is None
    iso, _ = fit_calibration(small_raw, small_labels, folds=5, method="isotonic")
    assert iso.method == "isotonic" and iso.isotonic is not None
    with pytest.raises(ValueError, match="calibration method must be 'auto' or one of"):
        fit_calibration(raw, labels, method="temperature")


# ---------------------------------------------------------------------- the report
def test_threshold_figures_and_log_loss_by_hand() -> None:
    figures = threshold_figures([0.2, 0.5, 0.7, 0.9], [True, False, True, True], 0.5)
    assert figures["kept"] == 3  # >= the threshold, as score_threshold keeps them
    assert figures["precision"] == pytest.approx(2 / 3)
    assert figures["mean_probability"] == pytest.approx(0.7)
    assert figures["gap"] == pytest.approx(0.7 - 2 / 3)
    assert threshold_figures([0.1, 0.2], [True, False]) == {
        "kept": 0, "precision": None, "mean_probability": None, "gap": None,
    }  # fmt: skip
    assert log_loss([0.5, 0.5], [True, False]) == pytest.approx(math.log(2))
    assert log_loss([0.8], [False], total=True) == pytest.approx(-math.log(0.2))
    assert log_loss([0.0], [True]) == pytest.approx(-math.log(1e-4))  # clipped, not infinite
    report = CalibrationReport(
        [True, False, True, True], {"platt": [0.2, 0.5, 0.7, 0.9]}, chosen="platt"
    )
    assert report.threshold["platt"]["kept"] == 3
    assert report.to_dict()["threshold_0.5"]["platt"]["gap"] == pytest.approx(0.0333, abs=1e-4)
    assert "3 kept, precision 0.667 vs mean p 0.700" in report.summary()
