"""The last encoder layer computed for the first token only gives the unmodified model's scores."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

PAIRS = [
    ("what is a panda?", "The giant panda is a bear native to China that eats bamboo shoots."),
    ("capital of china", "Beijing."),
    ("how do rerankers work", "A cross-encoder reads the query and the passage together " * 6),
]


def _load(folder, attention="sdpa"):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        folder, attn_implementation=attention
    )
    return model.eval(), AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_first_token_last_layer_scores_equal_the_full_layer(tiny_model, attention):
    from bge_rerank_plugins.first_token import compute_last_layer_for_first_token

    full, tokenizer = _load(tiny_model, attention)
    shortened, _ = _load(tiny_model, attention)
    assert compute_last_layer_for_first_token(shortened, tokenizer)
    assert "forward" in vars(shortened.base_model.encoder.layer[-1])
    assert list(shortened.state_dict()) == list(full.state_dict())
    padded = tokenizer(
        [q for q, _ in PAIRS], [p for _, p in PAIRS], padding=True, return_tensors="pt"
    )
    single = tokenizer(PAIRS[0][0], PAIRS[0][1], return_tensors="pt")  # no padding: no mask needed
    with torch.inference_mode():
        for batch in (padded, single):
            expected = full(**batch).logits
            got = shortened(**batch).logits
            assert got.shape == expected.shape
            assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
            # the last hidden state now holds the first token only, and that row is unchanged
            hidden = shortened(**batch, output_hidden_states=True).hidden_states[-1]
            reference = full(**batch, output_hidden_states=True).hidden_states[-1]
            assert hidden.shape[1] == 1
            assert torch.allclose(hidden[:, 0], reference[:, 0], atol=1e-5)


def test_first_token_last_layer_is_undone_when_scores_differ(tiny_bert, monkeypatch):
    from bge_rerank_plugins.runtime import first_token

    model, tokenizer = _load(tiny_bert)
    # A broken mask (padding attended to) changes the padded example's scores: the check
    # must notice and restore the original layer.
    monkeypatch.setattr(first_token, "_first_query_mask", lambda mask, length: None)
    assert not first_token.compute_last_layer_for_first_token(model, tokenizer)
    assert "forward" not in vars(model.base_model.encoder.layer[-1])


def test_first_token_last_layer_skips_heads_that_read_every_token(tiny_bert):
    from transformers import AutoModelForMaskedLM

    from bge_rerank_plugins.first_token import compute_last_layer_for_first_token

    _, tokenizer = _load(tiny_bert)
    masked_lm = AutoModelForMaskedLM.from_pretrained(tiny_bert).eval()
    assert not compute_last_layer_for_first_token(masked_lm, tokenizer)
    assert "forward" not in vars(masked_lm.base_model.encoder.layer[-1])


@pytest.mark.parametrize("backend", ["torch", "torch-int8"])
def test_scorer_loads_the_shortened_model_and_matches_the_full_one(tiny_model, backend):
    from bge_rerank_plugins import CrossEncoderScorer

    full, tokenizer = _load(tiny_model)
    scorer = CrossEncoderScorer(tiny_model, device="cpu", normalize=False, backend=backend)
    layers = scorer.model.base_model.encoder.layer
    assert "forward" in vars(layers[-1])
    scores = scorer.score(PAIRS[0][0], [p for _, p in PAIRS])
    batch = tokenizer([PAIRS[0][0]] * 3, [p for _, p in PAIRS], padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = full(**batch).logits[:, 0].tolist()
    tolerance = 1e-4 if backend == "torch" else 0.1  # int8 against float32
    assert scores == pytest.approx(expected, abs=tolerance)
