"""Ray batch scoring on a local Ray instance started by the test (2 CPUs, no dashboard)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: pip install 'bge-rerank-plugins[ray]'"
)
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'ray[data]'")

from bge_rerank_plugins import CrossEncoderScorer  # noqa: E402
from bge_rerank_plugins.ray_scoring import PairScorer, score_ray_dataset  # noqa: E402

pytestmark = pytest.mark.ray

ROWS = [
    {"id": i, "q": q, "p": p}
    for i, (q, p) in enumerate(
        [
            ("what do giant pandas eat?", "The giant panda's diet is almost entirely bamboo."),
            ("what do giant pandas eat?", "Pandas is a Python library for data frames."),
            ("capital of China", "Beijing is the capital of China."),
            ("capital of China", "Capital gains tax applies to investments."),
            ("how do transformers work?", "Self-attention relates every token to every other."),
            ("how do transformers work?", "Electrical transformers change voltage levels."),
            ("北京是哪个国家的首都？", "北京是中国的首都。"),
        ]
    )
]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def test_scores_match_the_in_process_scorer(local_ray, tiny_xlmr: Path):
    ds = ray.data.from_items(ROWS, override_num_blocks=2)
    scored = score_ray_dataset(
        ds, model=tiny_xlmr, query_column="q", passage_column="p", concurrency=2, batch_size=3
    )
    rows = sorted(scored.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(len(ROWS)))
    assert [r["p"] for r in rows] == [r["p"] for r in ROWS]
    want = CrossEncoderScorer(tiny_xlmr).score_pairs([(r["q"], r["p"]) for r in ROWS])
    assert [r["score"] for r in rows] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_raw_scores_and_errors(local_ray, tiny_bert: Path):
    import numpy as np

    fn = PairScorer(os.fspath(tiny_bert), normalize=False, score_column="logit")
    out = fn(
        {"query": np.array(["q", "q"]), "passage": np.array(["a b", "c"]), "k": np.array([1, 2])}
    )
    want = CrossEncoderScorer(tiny_bert, normalize=False).score_pairs([("q", "a b"), ("q", "c")])
    assert out["logit"].tolist() == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert out["k"].tolist() == [1, 2]
    with pytest.raises(KeyError, match="passage_column"):
        fn({"query": np.array(["q"]), "text": np.array(["a"])})
    ds = ray.data.from_items(ROWS[:1])
    with pytest.raises(TypeError, match="scorer_options has unknown keys"):
        score_ray_dataset(ds, model=tiny_bert, scorer_options={"max_lenght": 64})
    with pytest.raises(ValueError, match="concurrency"):
        score_ray_dataset(ds, model=tiny_bert, concurrency=0)
