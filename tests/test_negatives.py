"""Hard-negative mining: windows, exclusion, seeds, and each first stage on a tiny corpus."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bge_rerank_plugins.beir import load_beir, write_beir
from bge_rerank_plugins.finetune.negatives import (
    NegativeMiningConfig,
    first_stage_rankings,
    mine_hard_negatives,
    select_negatives,
)

RANKING = [f"d{i}" for i in range(1, 21)]  # d1 is rank 1 ... d20 is rank 20


def test_select_window_and_exclusion():
    picked = select_negatives(
        RANKING, {"d11", "d12"}, num_negatives=3, rank_range=(10, 15), sampling="top"
    )
    assert picked == ["d10", "d13", "d14"]
    everything = select_negatives(RANKING, {"d2"}, num_negatives=50, rank_range=(1, 4))
    assert everything == ["d1", "d3", "d4"]
    assert select_negatives(RANKING, set(), num_negatives=0) == []
    assert select_negatives(["a", "a", "b"], set(), num_negatives=5) == ["a", "b"]


def test_random_sampling_is_seeded_and_stays_in_the_window():
    draws = [
        select_negatives(
            RANKING, {"d5"}, num_negatives=4, rank_range=(3, 12), rng=random.Random(seed)
        )
        for seed in (1, 1, 3, 4, 5)
    ]
    assert draws[0] == draws[1]
    assert len({tuple(d) for d in draws}) == 4  # other seeds, other draws
    for draw in draws:
        assert len(draw) == 4 and "d5" not in draw
        ranks = [RANKING.index(d) + 1 for d in draw]
        assert all(3 <= r <= 12 for r in ranks) and ranks == sorted(ranks)


def test_config_validation():
    with pytest.raises(ValueError, match="source must be one of"):
        NegativeMiningConfig(source="splade")
    with pytest.raises(ValueError, match="1 <= first <= last"):
        NegativeMiningConfig(rank_range=(10, 5))
    with pytest.raises(ValueError, match="rank_range must be"):
        NegativeMiningConfig(rank_range=(1,))
    with pytest.raises(ValueError, match="needs model="):
        NegativeMiningConfig(source="dense")
    with pytest.raises(ValueError, match="sampling must be"):
        NegativeMiningConfig(sampling="hardest")
    with pytest.raises(ValueError, match="num_negatives must be"):
        NegativeMiningConfig(num_negatives=-1)


TEXTS = [
    "solar panels convert sunlight into electricity",
    "wind turbines convert wind into electricity",
    "solar eclipse of the sun and moon",
    "batteries store electricity for later",
    "sunlight and vitamin d",
    "coal power plants burn coal for electricity",
    "hydroelectric dams use water",
    "the solar system has eight planets",
]


def _dataset(tmp_path: Path, candidates: bool):
    corpus = {f"d{i}": {"title": "", "text": t} for i, t in enumerate(TEXTS)}
    folder = write_beir(
        tmp_path / ("with" if candidates else "without"),
        corpus=corpus,
        queries={"q1": "solar electricity", "q2": "wind electricity"},
        qrels={"train": {"q1": {"d0": 1, "d3": 0}, "q2": {"d1": 2}}},
        candidates={
            "train": [
                {"qid": "q1", "pos": ["d0"], "neg": [], "ranked": ["d7", "d0", "d2", "d6"]},
                {"qid": "q2", "pos": ["d1"], "neg": [], "ranked": ["d1", "d5", "d4"]},
            ]
        }
        if candidates
        else None,
    )
    return load_beir(folder, "train")


def test_given_candidates_are_reused(tmp_path):
    ds = _dataset(tmp_path, candidates=True)
    config = NegativeMiningConfig(num_negatives=2, sampling="top")
    assert mine_hard_negatives(ds, config) == {"q1": ["d7", "d2"], "q2": ["d5", "d4"]}
    window = NegativeMiningConfig(num_negatives=5, rank_range=(3, 4))
    assert mine_hard_negatives(ds, window) == {"q1": ["d2", "d6"], "q2": ["d4"]}
    more = mine_hard_negatives(ds, config, exclude={"q1": ["d7"]}, query_ids=["q1"])
    assert more == {"q1": ["d2", "d6"]}
    with pytest.raises(ValueError, match="not queries of this split"):
        mine_hard_negatives(ds, config, query_ids=["q9"])


def test_bm25_mining_excludes_positives(tmp_path):
    ds = _dataset(tmp_path, candidates=False)
    rankings = first_stage_rankings(ds, ["q1"], NegativeMiningConfig(source="auto"))
    assert rankings["q1"][0] == "d0"  # both query terms
    negatives = mine_hard_negatives(ds, NegativeMiningConfig(num_negatives=3, sampling="top"))
    assert "d0" not in negatives["q1"] and "d1" not in negatives["q2"]
    assert negatives["q1"] == rankings["q1"][1:4]
    assert all(d in {"d1", "d3", "d5", "d2", "d4", "d7"} for d in negatives["q1"])
    # graded relevance: with threshold 3, d1 (grade 2) is no longer a known positive
    loose = mine_hard_negatives(
        ds, NegativeMiningConfig(num_negatives=1, sampling="top"), relevance_threshold=3
    )
    assert loose["q2"] == ["d1"]


def test_seeds_change_random_draws_only_through_the_seed(tmp_path):
    ds = _dataset(tmp_path, candidates=False)
    a = mine_hard_negatives(ds, NegativeMiningConfig(num_negatives=2, seed=3))
    b = mine_hard_negatives(ds, NegativeMiningConfig(num_negatives=2, seed=3))
    subset = mine_hard_negatives(
        ds, NegativeMiningConfig(num_negatives=2, seed=3), query_ids=["q2"]
    )
    assert a == b
    assert subset["q2"] == a["q2"]  # a query's draw does not depend on the other queries


def test_cross_encoder_mining_uses_the_scorer(tmp_path):
    ds = _dataset(tmp_path, candidates=False)

    class ByLength:
        calls = 0

        def score_many(self, queries, candidates):
            ByLength.calls += 1
            return [[-len(t) for t in c] for c in candidates]  # shortest text ranks first

    config = NegativeMiningConfig(
        source="cross-encoder", model=ByLength(), num_negatives=1, sampling="top"
    )
    mined = mine_hard_negatives(ds, config)
    assert ByLength.calls == 1
    # q2's BM25 hits: d1 (positive), d0, d3, d5 (all "electricity"); shortest is d3
    assert mined["q2"] == ["d3"]


def test_dense_mining_with_an_encoder(tmp_path):
    ds = _dataset(tmp_path, candidates=False)
    torch = pytest.importorskip("torch")

    class BagOfWords:
        vocab = sorted({w for t in TEXTS for w in t.split()} | {"wind", "solar"})

        def encode(self, texts, batch_size, convert_to_tensor, normalize_embeddings, **_):
            rows = torch.tensor([[float(w in t.split()) for w in self.vocab] for t in texts])
            return torch.nn.functional.normalize(rows, dim=1)

    config = NegativeMiningConfig(
        source="dense", model=BagOfWords(), num_negatives=2, sampling="top"
    )
    mined = mine_hard_negatives(ds, config)
    # q1 "solar electricity": d0 is the positive; d2/d7 share "solar", d1/d3/d5 "electricity"
    assert "d0" not in mined["q1"] and len(mined["q1"]) == 2
    assert set(mined["q1"]) <= {"d1", "d2", "d3", "d5", "d7"}
    # q2 "wind electricity": d1 (both words) is the positive; of the "electricity" documents
    # d3 has the fewest distinct words, so the highest cosine
    assert mined["q2"][0] == "d3"
