"""Causal-LM rerankers: bge-reranker-v2-gemma's layout against FlagEmbedding, Qwen3-Reranker's
against sentence-transformers v6, the prefix cache, truncation, detection and the adapters.

The models are tiny random Gemma- and Qwen3-shaped causal LMs built here
(:mod:`bge_rerank_plugins.testing_causal`), with tokenizers trained on the spot.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.runtime.backends.causal import MODES
from bge_rerank_plugins.runtime.causal_prompts import BGE_DEFAULT_PROMPT
from bge_rerank_plugins.testing import SAMPLE_OTHER, SAMPLE_PASSAGES, SAMPLE_QUERY, sample_pairs

QUERY, PASSAGES = SAMPLE_QUERY, list(SAMPLE_PASSAGES)
OTHER = (SAMPLE_OTHER[0], list(SAMPLE_OTHER[1]))


def _flag_scores(model: Path, pairs, **options) -> list[float]:
    from FlagEmbedding import FlagLLMReranker

    reranker = FlagLLMReranker(str(model), use_fp16=False, devices="cpu", batch_size=3)
    return reranker.compute_score([list(p) for p in pairs], **options)


def _st_scores(model: Path, pairs, **options) -> list[float]:
    from sentence_transformers import CrossEncoder

    encoder = CrossEncoder(str(model), device="cpu", activation_fn=torch.nn.Identity())
    return encoder.predict(pairs, batch_size=3, show_progress_bar=False, **options).tolist()


# ------------------------------------------------------------------ exact scores
@pytest.mark.parametrize("max_length", [512, 24])
def test_bge_decoder_only_equals_flagembedding(gemma: Path, max_length: int) -> None:
    pytest.importorskip("FlagEmbedding")
    pairs = sample_pairs()
    scorer = CrossEncoderScorer(gemma, normalize=False, max_length=max_length, batch_size=3)
    assert scorer.config.family == "auto" and scorer._loaded.family == "bge-decoder-only"
    ours = scorer.score_pairs(pairs)
    reference = _flag_scores(gemma, pairs, max_length=max_length)
    assert ours == pytest.approx(reference, abs=1e-5)
    assert max(ours) - min(ours) > 1e-3  # not vacuous


def test_bge_prompt_is_the_instruction(gemma: Path) -> None:
    pytest.importorskip("FlagEmbedding")
    pairs, prompt = sample_pairs()[:4], "Is passage B relevant to query A? Answer 'Yes' or 'No'."
    scorer = CrossEncoderScorer(gemma, normalize=False, instruction=prompt, cache_size=100)
    ours = scorer.score_pairs(pairs)
    assert ours == pytest.approx(_flag_scores(gemma, pairs, prompt=prompt), abs=1e-5)
    default = CrossEncoderScorer(gemma, normalize=False, cache_size=100).score_pairs(pairs)
    assert max(abs(a - b) for a, b in zip(ours, default)) > 1e-4


def test_causal_yes_no_equals_sentence_transformers_logit_score(qwen3: Path) -> None:
    pairs = sample_pairs()
    scorer = CrossEncoderScorer(qwen3, normalize=False, batch_size=3)
    assert scorer._loaded.family == "causal-yes-no"
    ours = scorer.score_pairs(pairs)
    assert ours == pytest.approx(_st_scores(qwen3, pairs), abs=1e-5)
    assert max(ours) - min(ours) > 1e-3
    instruction = "Given a question, find the passage that answers it"
    custom = CrossEncoderScorer(qwen3, normalize=False, instruction=instruction)
    theirs = _st_scores(qwen3, pairs, prompt=instruction)
    assert custom.score_pairs(pairs) == pytest.approx(theirs, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(custom.score_pairs(pairs), ours)) > 1e-4


# ------------------------------------------------------------------ the fast paths
@pytest.mark.parametrize("kind", ["gemma", "qwen3"])
def test_prefix_cache_last_position_and_full_forward_agree(
    kind: str, gemma: Path, qwen3: Path
) -> None:
    model = gemma if kind == "gemma" else qwen3
    scorer = CrossEncoderScorer(model, normalize=False, batch_size=4)
    queries = [QUERY, OTHER[0]]
    candidates = [PASSAGES, OTHER[1]]
    results = {}
    for mode in MODES:
        scorer.runner.mode = mode
        scorer.runner.clear()
        results[mode] = scorer.score_many(queries, candidates)
    flat = {mode: [s for row in scores for s in row] for mode, scores in results.items()}
    assert flat["prefix"] == pytest.approx(flat["full"], abs=1e-5)
    assert flat["last"] == pytest.approx(flat["full"], abs=1e-5)
    # each query's prefix was computed once and reused for its other passages
    stats = scorer.runner.prefix_stats
    assert stats["computed"] == 2 and stats["reused"] >= 1


def test_prefix_cache_is_dropped_when_the_weights_change(qwen3: Path) -> None:
    scorer = CrossEncoderScorer(qwen3, normalize=False)
    before = scorer.score(QUERY, PASSAGES[:2])
    with torch.no_grad():
        for p in scorer.model.model.layers[0].parameters():
            p.mul_(1.5)
    after = scorer.score(QUERY, PASSAGES[:2])
    scorer.runner.mode = "full"
    assert after == pytest.approx(scorer.score(QUERY, PASSAGES[:2]), abs=1e-5)
    assert max(abs(a - b) for a, b in zip(before, after)) > 1e-4


# ------------------------------------------------------------------ truncation
def test_chat_truncation_cuts_the_passage_only(qwen3: Path, caplog) -> None:
    scorer = CrossEncoderScorer(qwen3, normalize=False, max_length=128)
    long = "The bank raised fresh capital from investors. " * 40
    full = CrossEncoderScorer(qwen3, normalize=False, max_length=4096)
    whole = full.encoder.encode([(QUERY, long)])["input_ids"][0]
    cut = scorer.encoder.encode([(QUERY, long)])
    ids = cut["input_ids"][0]
    assert len(ids) == 128 and cut["truncated"] == 1 and len(whole) > 128
    text = scorer.tokenizer.decode(ids)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n")
    assert ids[-12:] == whole[-12:]  # the answer cue's tokens, as in the untruncated pair
    assert QUERY in text and "<Instruct>:" in text and "<Document>:" in text
    score = scorer.score(QUERY, [long])
    assert len(score) == 1 and "Truncated 1 of 1 pairs" in caplog.text


def test_bge_truncation_keeps_query_and_prompt(gemma: Path) -> None:
    scorer = CrossEncoderScorer(gemma, normalize=False, max_length=32)
    ids = scorer.encoder.encode([(QUERY, PASSAGES[4])])["input_ids"][0]
    prompt = scorer.tokenizer(BGE_DEFAULT_PROMPT, add_special_tokens=False)["input_ids"]
    assert ids[-len(prompt) :] == prompt
    assert ids[0] == scorer.tokenizer.bos_token_id
    assert scorer.tokenizer.decode(ids).startswith(f"<bos>A: {QUERY}\nB: The bank")


# ------------------------------------------------------------------ options, detection, errors
def test_families_are_detected_and_checked(gemma: Path, qwen3: Path, tiny_bert: Path) -> None:
    assert CrossEncoderScorer(gemma, family="bge-decoder-only")._loaded.family == "bge-decoder-only"
    explicit = CrossEncoderScorer(gemma, family="causal-yes-no", normalize=False)
    assert explicit._loaded.family == "causal-yes-no"  # Gemma's tokenizer has no yes/no
    with pytest.raises(ValueError, match="not a causal LM"):
        CrossEncoderScorer(tiny_bert, family="bge-decoder-only")
    with pytest.raises(ValueError, match="backend='onnx' does not run causal"):
        CrossEncoderScorer(qwen3, backend="onnx")


def test_cache_is_keyed_by_instruction_and_half_precision_runs_on_cpu(qwen3: Path) -> None:
    scorer = CrossEncoderScorer(qwen3, normalize=False, cache_size=64)
    first = scorer.score(QUERY, PASSAGES)
    assert scorer.score(QUERY, PASSAGES) == first
    other = CrossEncoderScorer(qwen3, normalize=False, cache_size=64, instruction="Find facts")
    other.cache = scorer.cache  # one cache: the instruction is part of the key
    assert other.score(QUERY, PASSAGES) != first
    fp16 = CrossEncoderScorer(qwen3, normalize=False, dtype="float16", device="cpu")
    assert fp16.dtype == torch.float32  # float16 on CPU falls back to float32
    bf16 = CrossEncoderScorer(qwen3, normalize=False, dtype="bfloat16", device="cpu")
    assert bf16.score(QUERY, PASSAGES) == pytest.approx(first, abs=0.15)


# ------------------------------------------------------------------ adapters
def test_llama_index_and_langchain_adapters_score_causal_models(
    gemma: Path, qwen3: Path, adapters_equal_scorer
) -> None:
    for model in (gemma, qwen3):
        adapters_equal_scorer({"model": str(model)}, QUERY, PASSAGES)


def test_docstring_examples_of_the_causal_modules(doctests_pass) -> None:
    doctests_pass(
        "bge_rerank_plugins.runtime.causal_family",
        "bge_rerank_plugins.runtime.causal_prompts",
        "bge_rerank_plugins.runtime.backends.causal",
        "bge_rerank_plugins.testing_causal",
    )


# ------------------------------------------------------------------ last-token layer, length groups
def test_very_different_lengths_in_one_batch_equal_sentence_transformers(qwen3: Path) -> None:
    """One batch of pairs with one-word passages and one seven times longer: the peer pads on
    the left, we on the right, cut into length groups, with the last layer at the last token."""
    pairs = [(QUERY, "Beijing."), (QUERY, PASSAGES[4] * 3), (OTHER[0], OTHER[1][0])]
    pairs += [(QUERY, PASSAGES[1] * 2), (OTHER[0], "pandas.")]
    scorer = CrossEncoderScorer(qwen3, normalize=False, batch_size=8, max_length=2048)
    lengths = [len(ids) for ids in scorer.encoder.encode(pairs)["input_ids"]]
    assert max(lengths) > 6 * min(lengths)
    ours = scorer.score_pairs(pairs)
    assert ours == pytest.approx(_st_scores(qwen3, pairs), abs=1e-5)
    assert scorer.runner.last_layer_stats["trimmed"] >= 2  # more than one length group
    assert scorer.runner.last_layer_stats["whole"] == 0
    for mode, trim, split in [("last", False, False), ("last", True, True), ("full", False, False)]:
        runner = scorer.runner
        runner.mode, runner.trim_last_layer, runner.split_padding = mode, trim, split
        assert scorer.score_pairs(pairs) == pytest.approx(ours, abs=1e-5), mode


@pytest.mark.parametrize("kind", ["gemma", "qwen3"])
def test_truncated_pairs_and_half_precision_in_every_mode(
    kind: str, gemma: Path, qwen3: Path
) -> None:
    model = gemma if kind == "gemma" else qwen3
    pairs = [(QUERY, PASSAGES[4] * 4), (QUERY, PASSAGES[0]), (OTHER[0], PASSAGES[1] * 3)]
    limit = 64 if kind == "gemma" else 160  # the Qwen3 template alone is ~100 tokens
    scorer = CrossEncoderScorer(model, normalize=False, batch_size=4, max_length=limit)
    assert scorer.encoder.encode(pairs)["truncated"] == 2
    scorer.runner.mode = "full"
    full = scorer.score_pairs(pairs)
    for mode in ("last", "prefix"):
        scorer.runner.mode = mode
        scorer.runner.clear()
        assert scorer.score_pairs(pairs) == pytest.approx(full, abs=1e-5), mode
    bf16 = CrossEncoderScorer(
        model, normalize=False, dtype="bfloat16", device="cpu", max_length=limit
    )
    scores = bf16.score_pairs(pairs)
    assert all(torch.isfinite(torch.tensor(scores))) and bf16.runner.last_layer_stats["trimmed"]
