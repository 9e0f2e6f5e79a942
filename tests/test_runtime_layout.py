"""The runtime/tokenization consolidation (issue 20): new homes, old paths, public seams."""

from __future__ import annotations

import ast
import dataclasses
import math
import random
import threading
from pathlib import Path

import pytest

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.runtime.loading import LoadedModel, load_cross_encoder
from bge_rerank_plugins.tokenization import PairEncoder, example_batch, token_lengths

SRC = Path(__file__).resolve().parent.parent / "src" / "bge_rerank_plugins"


def _old_auto_rule(pair_lengths: list[int], limit: int) -> int:
    """The scorer's max_length="auto" rule before it moved to tokenization.p95_length."""
    if not pair_lengths:
        return min(limit, 512)
    ordered = sorted(pair_lengths)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return min(limit, max(8, -(-p95 // 8) * 8))


def test_auto_max_length_through_p95_length_matches_the_old_rule() -> None:
    rng = random.Random(20)
    for limit in (8, 64, 510, 512, 8192):
        encoder = PairEncoder(
            None,
            threading.RLock(),
            max_length="auto",
            query_max_length=None,
            model_max_length=limit,
        )
        for n in (0, 1, 2, 19, 20, 21, 99, 100, 101, 1000):
            lengths = [rng.randint(1, 3 * limit) for _ in range(n)]
            assert encoder.resolve_max_length(lengths) == _old_auto_rule(lengths, limit)


def test_fixed_and_default_max_length_are_capped_by_the_model() -> None:
    def resolve(max_length: int | None, limit: int) -> int:
        encoder = PairEncoder(
            None,
            threading.RLock(),
            max_length=max_length,
            query_max_length=None,
            model_max_length=limit,
        )
        return encoder.resolve_max_length([10_000])

    assert resolve(None, 8192) == 512
    assert resolve(None, 128) == 128
    assert resolve(256, 128) == 128
    assert resolve(64, 512) == 64


def test_runners_is_a_declared_field_of_its_own_per_model() -> None:
    names = {f.name for f in dataclasses.fields(LoadedModel)}
    assert "runners" in names
    one = LoadedModel(None, None, "cpu", None, "a", 512)
    two = LoadedModel(None, None, "cpu", None, "b", 512)
    one.runners["onnx"] = object()
    assert two.runners == {}


def test_the_scorer_shares_its_lock_and_texts_publicly(tiny_bert: Path) -> None:
    scorer = CrossEncoderScorer(tiny_bert)
    loaded = load_cross_encoder(tiny_bert, load_weights=False)
    assert scorer.encoder.lock is loaded.lock
    assert scorer.encoder.tokenizer is scorer.tokenizer
    records = [{"title": "T", "text": "body"}, "plain"]
    assert scorer.passage_texts(records) == [
        scorer.passage_text(r, i) for i, r in enumerate(records)
    ]
    with pytest.raises(TypeError, match="candidates\\[0\\]"):
        scorer.passage_texts([None], prefix="candidates[0]")


def test_encode_keeps_the_query_and_cuts_the_passage(tiny_bert: Path) -> None:
    scorer = CrossEncoderScorer(tiny_bert, max_length=16)
    query = "what is the capital of china"
    out = scorer.encoder.encode([(query, "beijing " * 50), (query, "short")])
    assert out["max_length"] == 16 and out["truncated"] == 1
    assert len(out["input_ids"][0]) == 16
    (query_tokens,), _ = token_lengths(scorer.tokenizer, [query])
    kept = scorer.tokenizer.decode(out["input_ids"][0], skip_special_tokens=True)
    assert kept.startswith(query)
    assert query_tokens < 16


def test_example_batch_is_padded(tiny_bert: Path) -> None:
    loaded = load_cross_encoder(tiny_bert, load_weights=False)
    batch = example_batch(loaded.tokenizer)
    assert batch["attention_mask"].shape[0] == 2
    assert int(batch["attention_mask"].sum(1).min()) < batch["attention_mask"].shape[1]


def test_old_paths_re_export_the_moved_names() -> None:
    from bge_rerank_plugins import first_token, half_weights, loading, tokenization
    from bge_rerank_plugins.runtime import device
    from bge_rerank_plugins.runtime import first_token as new_first_token
    from bge_rerank_plugins.runtime import half_weights as new_half_weights
    from bge_rerank_plugins.runtime import loading as new_loading

    assert loading.load_cross_encoder is new_loading.load_cross_encoder
    assert loading.LoadedModel is new_loading.LoadedModel
    assert loading.clear_model_cache is new_loading.clear_model_cache
    assert loading.resolve_device is device.resolve_device
    assert loading.DTYPES is device.DTYPES
    assert loading.padded_example_batch is tokenization.example_batch
    assert loading.plain_encodings is tokenization.plain_encodings
    for name in loading.__all__:
        assert hasattr(loading, name), name
    assert (
        first_token.compute_last_layer_for_first_token
        is new_first_token.compute_last_layer_for_first_token
    )
    assert half_weights.load_half_precision is new_half_weights.load_half_precision


def test_chunking_uses_no_private_attribute_of_the_scorer() -> None:
    tree = ast.parse((SRC / "chunking.py").read_text(encoding="utf-8"))
    private = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "scorer"
        and node.attr.startswith("_")
    ]
    assert not private, f"chunking reaches into the scorer: {private}"
