"""Bi-encoder teacher scores for distillation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bge_rerank_plugins.finetune import TrainingGroup, biencoder_teacher_scores


class CountingEncoder:
    """A stand-in bi-encoder: fixed vectors per text, and a record of what it encoded."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors
        self.calls: list[list[str]] = []

    def encode(self, texts, **_):
        self.calls.append(list(texts))
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def test_scores_are_scaled_cosines_and_texts_are_encoded_once() -> None:
    encoder = CountingEncoder(
        {"q1": [1, 0], "q2": [0, 2], "a": [3, 0], "b": [0, 1], "c": [1, 1]}  # not unit length
    )
    groups = [
        TrainingGroup("q1", ["a"], ["b", "c"]),
        {"query": "q2", "pos": ["b"], "neg": ["a", "c"]},  # FlagEmbedding record
    ]
    out = biencoder_teacher_scores(groups, encoder, scale=10)
    assert out[0].positive_scores == (10.0,)
    assert out[0].negative_scores == pytest.approx((0.0, 10 / np.sqrt(2)), abs=1e-5)
    assert out[1].positive_scores == (10.0,)
    assert out[1].negative_scores == pytest.approx((0.0, 10 / np.sqrt(2)), abs=1e-5)
    encoded = [t for call in encoder.calls for t in call]
    assert sorted(encoded) == ["a", "b", "c", "q1", "q2"]  # each distinct text once


def test_bad_scale_is_named() -> None:
    with pytest.raises(ValueError, match="scale"):
        biencoder_teacher_scores([TrainingGroup("q", ["a"], ["b"])], CountingEncoder({}), scale=0)


def test_distillation_runs_on_teacher_scores_from_a_real_sentence_transformer(
    tiny_bert: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer, models

    from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine

    module = models.Transformer(str(tiny_bert))
    encoder = SentenceTransformer(
        modules=[module, models.Pooling(module.get_word_embedding_dimension())], device="cpu"
    )
    groups = [
        TrainingGroup("what do pandas eat", ["pandas eat bamboo"], ["tax on shares", "a car"]),
        TrainingGroup("capital of China", ["Beijing is the capital"], ["apples", "a boat"]),
    ]
    scored = biencoder_teacher_scores(groups, encoder)
    assert all(g.has_scores and len(g.negative_scores) == 2 for g in scored)
    assert all(-20.0 <= s <= 20.0 for g in scored for s in (*g.positive_scores, *g.negative_scores))
    engine = CrossEncoderFinetuneEngine(
        scored,
        model_id=str(tiny_bert),
        model_output_path=str(tmp_path / "out"),
        loss="distill",
        num_negatives=2,
        batch_size=2,
        epochs=1,
        show_progress_bar=False,
    )
    assert engine.finetune().global_step == 1


def test_a_model_path_given_as_str_is_loaded_and_bf16_stays_close_to_fp32(tiny_bert: Path) -> None:
    groups = [
        TrainingGroup("what do pandas eat", ["pandas eat bamboo"], ["tax on shares", "a car"]),
        TrainingGroup("capital of China", ["Beijing is the capital"], ["apples", "a boat"]),
    ]
    exact = biencoder_teacher_scores(groups, str(tiny_bert), scale=1.0, precision="fp32")
    fast = biencoder_teacher_scores(groups, str(tiny_bert), scale=1.0, precision="bf16")
    for e, f in zip(exact, fast):
        assert all(-1.0001 <= s <= 1.0001 for s in e.positive_scores + e.negative_scores)
        assert f.positive_scores + f.negative_scores == pytest.approx(
            e.positive_scores + e.negative_scores, abs=2e-2
        )


def test_bad_precision_is_named() -> None:
    with pytest.raises(ValueError, match="precision"):
        biencoder_teacher_scores(
            [TrainingGroup("q", ["a"], ["b"])], CountingEncoder({}), precision="fp16"
        )
