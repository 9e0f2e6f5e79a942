"""The engine's own yardstick: held-out queries, the figures before and after, the warning,
and the decisions made from them (learning rates, warm start, batch size)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bge_rerank_plugins.finetune import holdout as ho
from bge_rerank_plugins.finetune.phases import learning_rates
from bge_rerank_plugins.finetune.recipe import FinetuneConfig
from bge_rerank_plugins.finetune.warm_start import decide

TOPICS = ["panda", "tax", "river", "violin", "comet", "glacier", "pepper", "falcon"]


def samples(queries: int) -> list[dict]:
    """LlamaIndex samples: per query one positive sharing its words, then three negatives."""
    rows = []
    for i in range(queries):
        topic = TOPICS[i % len(TOPICS)]
        query = f"question {i} about the {topic}"
        rows.append({"query": query, "context": f"the {topic} answer number {i}", "score": 1.0})
        for j in range(3):
            other = TOPICS[(i + j + 1) % len(TOPICS)]
            rows.append({"query": query, "context": f"a {other} passage {i}-{j}", "score": 0.0})
    return rows


@pytest.mark.parametrize(
    ("spec", "queries", "expected"),
    [("auto", 49, 0), ("auto", 50, 20), ("auto", 659, 66), ("auto", 5000, 100), (7, 30, 7),
     (0.25, 40, 10), (0, 100, 0), (None, 100, 0), (500, 10, 9)],
)  # fmt: skip
def test_held_out_count(spec, queries, expected) -> None:
    assert ho.held_out_count(spec, queries) == expected


def test_split_is_by_query_seeded_and_keeps_order() -> None:
    rows = samples(60)
    train, held = ho.split_by_query(rows, "auto", seed=3)
    assert len({r["query"] for r in held}) == 20
    assert not {r["query"] for r in held} & {r["query"] for r in train}
    assert len(train) + len(held) == len(rows)
    # each part keeps the records' order, and the same seed gives the same split
    assert [r for r in rows if r in held] == held
    assert ho.split_by_query(rows, "auto", seed=3)[1] == held
    assert ho.split_by_query(rows, "auto", seed=4)[1] != held


def test_held_out_queries_keep_the_given_order_and_tell_a_label_sorted_list() -> None:
    rows = [
        {"query": "q", "context": "n1", "score": 0.0},
        {"query": "q", "context": "p", "score": 1.0},
        {"query": "q", "context": "n2", "score": 0.0},
        {"query": "only positives", "context": "x", "score": 1.0},
    ]
    (item,) = ho.held_out_queries(rows)  # a query without a negative cannot be ranked
    assert item.docs == ("n1", "p", "n2") and item.relevant == {1}
    assert not item.label_sorted
    (sorted_item,) = ho.held_out_queries(samples(1))
    assert sorted_item.label_sorted


def test_ndcg_of_pools_and_of_a_random_order() -> None:
    item = ho.HeldOutQuery("q", ("a", "b"), frozenset({1}))
    assert ho.pool_ndcg([item], [[0.0, 1.0]]) == 1.0
    assert ho.pool_ndcg([item], [[1.0, 0.0]]) == pytest.approx(0.6309, abs=1e-4)
    # uniform over the two orders: (1 + 1/log2(3)) / 2
    assert ho.random_ndcg([item], draws=4000) == pytest.approx(0.8155, abs=0.01)
    assert ho.pool_ndcg([item], ho.given_order_scores([item])) == pytest.approx(0.6309, abs=1e-4)


def test_report_warns_when_worse_than_the_order_it_was_given(caplog) -> None:
    caplog.set_level(logging.INFO)
    report = ho.HeldOutReport(queries=20, random=0.5, given=0.8, bm25=0.7, base=0.5)
    report.finetuned = 0.9
    report.check()
    assert "worse" not in caplog.text and "finetuned 0.900" in caplog.text
    report.finetuned = 0.75  # beats BM25, but the given order is the first stage
    report.check()
    assert "worse than the given order (nDCG@10 0.750 < 0.800)" in caplog.text
    caplog.clear()
    no_order = ho.HeldOutReport(queries=20, random=0.5, bm25=0.7, base=0.6, finetuned=0.55)
    no_order.check()
    assert "worse than BM25 over the passages" in caplog.text
    assert "worse than the base model" in caplog.text


def test_warm_start_decision() -> None:
    assert decide("auto", base=0.52, teacher=0.8, random=0.5).use
    assert not decide("auto", base=0.9, teacher=0.95, random=0.5).use  # a trained head
    assert not decide("auto", base=0.5, teacher=0.52, random=0.5).use  # a useless teacher
    assert not decide("auto", base=None, teacher=None, random=None).use
    assert decide(True, base=0.9, teacher=None, random=0.5).use
    assert not decide(False, base=0.5, teacher=0.9, random=0.5).use


def test_learning_rates_follow_the_head() -> None:
    auto = FinetuneConfig()
    assert learning_rates(auto, head_trained=False)[:2] == (2e-4, pytest.approx(2e-3))
    assert learning_rates(auto, head_trained=True)[:2] == (2e-5, pytest.approx(2e-5))
    assert learning_rates(auto, head_trained=None)[:2] == (2e-4, pytest.approx(2e-3))
    fixed = FinetuneConfig(learning_rate=1e-4, head_learning_rate=None)
    assert learning_rates(fixed, head_trained=True)[:2] == (1e-4, None)
    with pytest.raises(ValueError, match="holdout"):
        FinetuneConfig(holdout=-1)
    with pytest.raises(ValueError, match="warm_start"):
        FinetuneConfig(warm_start="yes")


def test_engine_holds_out_queries_reports_before_after_and_warns(
    tiny_bert: Path, tmp_path: Path, caplog
) -> None:
    from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine
    from bge_rerank_plugins.finetune.phases import steps_batch_size

    caplog.set_level(logging.INFO)
    rows = samples(60)
    engine = CrossEncoderFinetuneEngine(
        rows,
        model_id=str(tiny_bert),
        model_output_path=str(tmp_path / "out"),
        batch_size=16,
        epochs=1,
        max_steps=2,
        show_progress_bar=False,
        # the warm start's time-sized phase could make this tiny model perfect on the held-out
        # queries (its teacher includes BM25, which is perfect here), and how far it gets
        # depends on the machine's speed: off, the 2 steps leave a random-headed model
        warm_start=False,
    )
    held = {item.query for item in engine.held_out}
    assert len(held) == 20
    trained = {r.query for r in engine.training_records()}
    assert len(trained) == 40 and not held & trained  # by query, never by row
    assert steps_batch_size(engine, "softmax") == 4  # 16 samples = 4 groups of 1 + 3
    result = engine.finetune()
    report = result.held_out
    assert report.queries == 20 and report.given is None  # positives listed first
    assert report.bm25 == 1.0  # each positive shares its query's words, no negative does
    assert report.base is not None and report.finetuned is not None
    assert report.finetuned < 1.0  # a random tiny model after 2 steps
    assert "worse than BM25 over the passages" in caplog.text
    assert "Held out 20 of the training queries" in caplog.text
    assert "Learning rates: encoder" in caplog.text and "Time budget" in caplog.text
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["held_out"]["queries"] == 20
    assert summary["held_out"]["finetuned"] == round(report.finetuned, 4)
    assert summary["decisions"]["batch_size"] == 4
    # the best checkpoint was chosen on the held-out queries
    assert result.best_metric is not None


def test_no_holdout_for_small_data_or_with_a_val_dataset(tiny_bert: Path, tmp_path: Path) -> None:
    from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine

    small = CrossEncoderFinetuneEngine(
        samples(10), model_id=str(tiny_bert), model_output_path=str(tmp_path / "a")
    )
    assert small.held_out == [] and small.evaluator is None
    with_val = CrossEncoderFinetuneEngine(
        samples(60),
        model_id=str(tiny_bert),
        model_output_path=str(tmp_path / "b"),
        val_dataset=samples(5),
    )
    assert len(with_val.training_records()) == 60  # nothing held out of the training data
    assert len(with_val.held_out) == 5  # the val_dataset is the yardstick


def test_an_encoder_without_a_head_needs_from_encoder(tiny_bert: Path, tmp_path: Path, caplog):
    """Fine-tuning from a bare encoder is said explicitly, never by accident (issue 22)."""
    import shutil

    from transformers import AutoConfig, BertModel

    from bge_rerank_plugins import RandomHeadError
    from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine

    encoder = tmp_path / "encoder"
    BertModel(AutoConfig.from_pretrained(tiny_bert)).save_pretrained(encoder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tiny_bert / name).is_file():
            shutil.copy(tiny_bert / name, encoder / name)
    with pytest.raises(RandomHeadError, match="from_encoder=True") as error:
        CrossEncoderFinetuneEngine(
            samples(4), model_id=str(encoder), model_output_path=str(tmp_path / "a")
        )
    assert "classifier.weight" in str(error.value)
    caplog.set_level(logging.INFO)
    engine = CrossEncoderFinetuneEngine(
        samples(4), model_id=str(encoder), model_output_path=str(tmp_path / "b"), from_encoder=True
    )
    assert "starts at random (from_encoder=True)" in caplog.text and engine.from_encoder
    # a folder with a head (even an untrained one) needs nothing
    CrossEncoderFinetuneEngine(
        samples(4), model_id=str(tiny_bert), model_output_path=str(tmp_path / "c")
    )


def test_blended_teacher_is_cosine_and_bm25_min_max_blended(tiny_bert: Path) -> None:
    """weight 1 is the encoder's cosine alone, weight 0 BM25 alone, both scaled to [0, 8] within
    each group; the default weight lies between them."""
    from sentence_transformers import CrossEncoder

    from bge_rerank_plugins.finetune.data import TrainingGroup
    from bge_rerank_plugins.finetune.warm_start import (
        BLEND_SCALE,
        blended_teacher_scores,
        own_teacher_scores,
    )

    model = CrossEncoder(str(tiny_bert), num_labels=1, device="cpu")
    groups = [
        TrainingGroup("panda bamboo", ["the panda eats bamboo"], ["a tax form", "river stones"]),
        TrainingGroup("comet tail", ["comet tail of ice"], ["violin strings", "pepper soup"]),
    ]
    corpus = ["falcon flight", "glacier ice", *[t for g in groups for t in g.negatives]]
    kw = {"corpus": corpus, "max_length": 32, "precision": "fp32"}
    lexical = blended_teacher_scores(groups, model, weight=0.0, **kw)
    semantic = blended_teacher_scores(groups, model, weight=1.0, **kw)
    blended = blended_teacher_scores(groups, model, **kw)
    cosine = own_teacher_scores(groups, model, max_length=32, precision="fp32")
    for lex, sem, mix, cos in zip(lexical, semantic, blended, cosine):
        # BM25: the positive shares the query's words, the negatives none
        assert lex.positive_scores == (BLEND_SCALE,)
        assert lex.negative_scores == (0.0, 0.0)
        raw = [*cos.positive_scores, *cos.negative_scores]
        low, high = min(raw), max(raw)
        expected = [BLEND_SCALE * (v - low) / (high - low) for v in raw]
        assert [*sem.positive_scores, *sem.negative_scores] == pytest.approx(expected, abs=1e-5)
        both = [*mix.positive_scores, *mix.negative_scores]
        halves = [(a + b) / 2 for a, b in zip(expected, [BLEND_SCALE, 0.0, 0.0])]
        assert both == pytest.approx(halves, abs=1e-5)
