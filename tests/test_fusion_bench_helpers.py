"""``benchmarks/fusion_scifact.py``'s helpers on tiny inputs: the raw-score cache (its key, its
reuse across runs) and the calibration table. No model, no data, no benchmark run."""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


helpers = _load("fusion_bench_helpers")


class CountingScorer:
    """Scores a pair by its lengths; counts the pairs it was asked for."""

    template = None

    def __init__(self) -> None:
        self.pairs = 0

    def score_many(self, queries, candidates, *, normalize=None, show_progress_bar=None):
        self.pairs += sum(map(len, candidates))
        return [[len(q) - 0.1 * len(p) for p in ps] for q, ps in zip(queries, candidates)]


def _model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "config.json").write_text("{}", encoding="utf-8")
    return folder


def test_the_cache_key_follows_the_weights_and_the_settings(tmp_path: Path) -> None:
    model = _model(tmp_path)
    cache = helpers.ScoreCache(tmp_path / "cache", str(model), max_length=256, top_k=30)
    key = cache.key("scifact", "dev", "bm25 (given lists)")
    assert key["weights"] == [
        ["model.safetensors", 7, (model / "model.safetensors").stat().st_mtime_ns]
    ]
    cache.save(key, {"k": 1.5})
    assert cache.load(key) == {"k": 1.5}
    assert cache.path(key).name.startswith("scores_scifact_dev_bm25-given-lists-_")
    # another split, first stage, max_length or top_k: another file
    assert cache.load(cache.key("scifact", "test", "bm25 (given lists)")) == {}
    assert cache.load(cache.key("scifact", "dev", "minilm cosine")) == {}
    other = helpers.ScoreCache(tmp_path / "cache", str(model), max_length=128, top_k=30)
    assert other.load(other.key("scifact", "dev", "bm25 (given lists)")) == {}
    # new weights (size or mtime): the old scores are not used
    (model / "model.safetensors").write_bytes(b"new weights")
    stat = (model / "model.safetensors").stat()
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fresh = helpers.ScoreCache(tmp_path / "cache", str(model), max_length=256, top_k=30)
    assert fresh.load(fresh.key("scifact", "dev", "bm25 (given lists)")) == {}
    # a Hub id: the id is the identity
    assert helpers.model_fingerprint("BAAI/bge-reranker-base") == {
        "model": "BAAI/bge-reranker-base"
    }
    assert helpers.pair_key("q", "p") != helpers.pair_key("qp", "")


def test_a_second_run_scores_nothing(tmp_path: Path) -> None:
    cache = helpers.ScoreCache(tmp_path / "cache", str(_model(tmp_path)), 256, 30)
    queries, passages = ["panda", "river"], [["bamboo", "leaf"], ["stone", "leaf", "fish"]]

    first = helpers.RawScores(CountingScorer(), "tiny", cache)
    first.section("scifact", "dev", "bm25")
    want = first.score_many(queries, passages)
    first.section("scifact", "dev", "dense")  # shares one pair with the BM25 run
    assert first.score_many(["panda"], [["bamboo", "tree"]])[0][0] == want[0][0]
    first.flush()
    assert first.pairs_scored == 6 and first.scorer.pairs == 6

    again = helpers.RawScores(CountingScorer(), "tiny", cache)
    again.section("scifact", "dev", "dense")  # alone: its file holds the shared pair too
    assert again.score_many(["panda"], [["bamboo", "tree"]]) == [[want[0][0], 5 - 0.4]]
    again.section("scifact", "dev", "bm25")
    assert again.score_many(queries, passages) == want
    assert again.scorer.pairs == 0 and again.pairs_from_cache == 7 - 1  # 'bamboo' read once
    uncached = helpers.RawScores(CountingScorer(), "tiny")
    uncached.section("scifact", "dev", "bm25")
    assert uncached.score_many(queries, passages) == want and uncached.scorer.pairs == 5
    with pytest.raises(ValueError, match="raw logits only"):
        uncached.score_many(queries, passages, normalize=True)


def test_the_calibration_table_lists_every_method(tmp_path: Path) -> None:
    from bge_rerank_plugins.calibration import sigmoid

    rng = random.Random(0)

    def half(n: int):
        raw = [[rng.gauss(-2, 2.5) for _ in range(10)] for _ in range(n)]
        return raw, [[rng.random() < sigmoid(1.2 * x) for x in q] for q in raw]

    (fx, fy), (tx, ty) = half(20), half(20)
    lines, extra, curves, labels = helpers.calibration_table(fx, fy, tx, ty, folds=5, seed=0)
    assert len(labels) == 200 and set(curves) == {
        "sigmoid (uncalibrated)",
        "platt",
        "beta",
        "isotonic",
    }
    assert len(lines) == 2 + 4 and lines[0].startswith("| scores | fit-half CV log loss")
    chosen = [line for line in lines if "chosen by the fit" in line]
    assert len(chosen) == 1 and chosen[0].startswith(f"| {extra['method']} |")
    assert "never chosen" in extra["isotonic"]  # 200 fit pairs: below the library's minimum
    beta = extra["curves"]["beta"]
    assert set(beta) >= {"ece", "kept", "precision", "mean_probability", "gap", "fit_cv_log_loss"}
    kept = [p for p in curves["beta"] if p >= 0.5]
    assert beta["kept"] == len(kept) and beta["mean_probability"] == pytest.approx(
        sum(kept) / len(kept)
    )
    forced = helpers.calibration_table(fx, fy, tx, ty, folds=5, seed=0, method="beta")[1]
    assert forced["method"] == "beta" and forced["choice"] == "asked for"
