"""LoRA fine-tuning of causal-LM rerankers (:mod:`bge_rerank_plugins.finetune.causal`).

Tiny random Gemma- and Qwen3-shaped rerankers (:mod:`bge_rerank_plugins.testing_causal`) are
trained a few steps on hand-made groups; the merged export must rank the training positives
higher than the base did, hold weights other than the base's, and score the same in our scorer
as in FlagEmbedding's ``FlagLLMReranker`` (BGE layout) or sentence-transformers (Qwen3 layout).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.finetune import (
    CausalFinetuneEngine,
    CrossEncoderFinetuneEngine,
    finetune_causal_reranker,
)

GROUPS = [
    {
        "query": "what is the capital of China",
        "positives": ["Beijing is the capital of the People's Republic of China."],
        "negatives": [
            "Apples are a fruit rich in fibre.",
            "The bank raised fresh capital from investors.",
            "Capital gains tax applies when you sell shares.",
        ],
    },
    {
        "query": "what do pandas eat",
        "positives": ["The giant panda eats bamboo."],
        "negatives": [
            "pandas is a Python library.",
            "Apples are a fruit rich in fibre.",
            "The bank raised fresh capital from investors.",
        ],
    },
    {
        "query": "how tall is mount everest",
        "positives": ["Mount Everest is 8,849 metres tall."],
        "negatives": [
            "The giant panda eats bamboo.",
            "Capital gains tax applies when you sell shares.",
            "pandas is a Python library.",
        ],
    },
]
#: Few steps at a high rate: enough to move a tiny random model, fast on one CPU thread.
TRAIN = {
    "max_steps": 4,
    "learning_rate": 5e-3,
    "num_negatives": 3,
    "batch_size": 3,
    "device": "cpu",
}


def _pairs() -> list[tuple[str, str]]:
    return [(g["query"], d) for g in GROUPS for d in (*g["positives"], *g["negatives"])]


def _margin(scores: list[float]) -> float:
    """Mean over the groups of (positive score - mean negative score)."""
    total, start = 0.0, 0
    for group in GROUPS:
        size = 1 + len(group["negatives"])
        row = scores[start : start + size]
        total += row[0] - sum(row[1:]) / (size - 1)
        start += size
    return total / len(GROUPS)


def _ours(model: Path) -> tuple[str, list[float]]:
    scorer = CrossEncoderScorer(model, normalize=False, batch_size=4, device="cpu")
    return scorer._loaded.family, scorer.score_pairs(_pairs())


def test_training_scores_are_the_scorers_scores(gemma: Path, qwen3: Path) -> None:
    """The score the loss trains (left-padded batch, last position) is the one the scorer reads."""
    from types import SimpleNamespace

    from bge_rerank_plugins.finetune.causal_training import (
        GroupCollator,
        encode_pairs,
        family_scorer,
    )
    from bge_rerank_plugins.runtime.causal_family import causal_encoder, causal_token_ids
    from bge_rerank_plugins.runtime.families import FAMILIES
    from bge_rerank_plugins.runtime.loading import load_cross_encoder

    for model in (gemma, qwen3):
        loaded = load_cross_encoder(model, device="cpu", dtype="float32", use_cache=False)
        options = SimpleNamespace(max_length=512, query_max_length=None, instruction=None)
        encoder = causal_encoder(loaded.family, loaded, options)
        rows = [
            SimpleNamespace(query=g["query"], docs=[*g["positives"], *g["negatives"]], pool=None)
            for g in GROUPS
        ]
        batch = GroupCollator(encode_pairs(encoder, rows), loaded.tokenizer.pad_token_id)(
            [{"query": r.query, "docs": r.docs} for r in rows]
        )
        batch.pop("group_sizes")
        score = family_scorer(
            causal_token_ids(loaded.family, loaded), FAMILIES[loaded.family].score
        )
        with torch.no_grad():
            trained = score(loaded.model, batch).tolist()
        assert trained == pytest.approx(_ours(model)[1], abs=1e-5)


def test_lora_export_loads_in_flagembedding_with_our_scores(gemma: Path, tmp_path: Path) -> None:
    pytest.importorskip("FlagEmbedding")
    from FlagEmbedding import FlagLLMReranker

    family, before = _ours(gemma)
    assert family == "bge-decoder-only"
    out = tmp_path / "gemma-ft"
    result = finetune_causal_reranker(GROUPS, gemma, out, warmup_ratio=0.0, **TRAIN)
    assert result.family == "bge-decoder-only" and result.global_step == 4
    assert len(result.losses) == 4 and result.losses[-1] < result.losses[0]

    family, after = _ours(out)
    assert family == "bge-decoder-only"  # detected as the base was, with no family= given
    assert _margin(after) > _margin(before) + 0.2  # the positives moved up
    assert max(abs(a - b) for a, b in zip(after, before)) > 1e-3  # trained weights were saved
    reranker = FlagLLMReranker(str(out), use_fp16=False, devices="cpu", batch_size=3)
    reference = reranker.compute_score([list(p) for p in _pairs()])
    assert after == pytest.approx(reference, abs=1e-5)

    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["family"] == "bge-decoder-only" and summary["global_step"] == 4
    assert not any(p.name.startswith("adapter") for p in out.iterdir())  # merged, plain folder


def test_qwen3_yes_no_export_keeps_its_layout(qwen3: Path, tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    family, before = _ours(qwen3)
    assert family == "causal-yes-no"
    out = tmp_path / "qwen3-ft"
    result = finetune_causal_reranker(
        GROUPS, qwen3, out, warmup_ratio=0.0, lora={"r": 4, "lora_alpha": 8}, **TRAIN
    )
    assert result.family == "causal-yes-no" and result.losses[-1] < result.losses[0]
    assert (out / "1_LogitScore" / "config.json").read_text() == (
        qwen3 / "1_LogitScore" / "config.json"
    ).read_text()
    family, after = _ours(out)
    assert family == "causal-yes-no"
    assert _margin(after) > _margin(before) + 0.2
    st = CrossEncoder(str(out), device="cpu", activation_fn=torch.nn.Identity())
    reference = st.predict(_pairs(), batch_size=4, show_progress_bar=False).tolist()
    assert after == pytest.approx(reference, abs=1e-5)


def test_the_engine_routes_a_causal_base_to_lora(gemma: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine-out"
    engine = CrossEncoderFinetuneEngine(
        GROUPS,
        model_id=str(gemma),
        model_output_path=str(out),
        show_progress_bar=False,
        device="cpu",
    )
    assert isinstance(engine, CausalFinetuneEngine) and engine.family == "bge-decoder-only"
    assert isinstance(engine, CrossEncoderFinetuneEngine)  # the engine's API is kept
    result = engine.finetune(max_steps=1)
    assert result.global_step == 1 and (out / "model.safetensors").is_file()
    assert result.decisions["path"] == "causal LoRA"
    assert _ours(out)[0] == "bge-decoder-only"
    with pytest.raises(TypeError, match="not built directly"):
        CausalFinetuneEngine(GROUPS, model_id=str(gemma))
    with pytest.raises(ValueError, match="val_dataset"):
        CrossEncoderFinetuneEngine(GROUPS, model_id=str(gemma), val_dataset=GROUPS)
    with pytest.raises(ValueError, match="freeze_layers"):
        CrossEncoderFinetuneEngine(GROUPS, model_id=str(gemma), freeze_layers=1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_steps": 0}, ValueError, "max_steps"),
        ({"learning_rate": -1.0}, ValueError, "learning_rate"),
        ({"max_length": 4}, ValueError, "max_length"),
        ({"family": "sequence-classification"}, ValueError, "family"),
        ({"dtype": "float16"}, ValueError, "dtype"),
        ({"lora": "yes"}, TypeError, "lora"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match, tmp_path: Path) -> None:
    with pytest.raises(error, match=match):
        finetune_causal_reranker(GROUPS, tmp_path / "nowhere", tmp_path / "out", **kwargs)


def test_a_cross_encoder_base_is_sent_to_the_engine(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CrossEncoderFinetuneEngine"):
        finetune_causal_reranker(GROUPS, tiny_bert, tmp_path / "out")
