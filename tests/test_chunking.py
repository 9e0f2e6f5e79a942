"""Long-document chunking: windows cover the text, overlap, and max-aggregate per passage."""

from __future__ import annotations

import itertools

import pytest

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.chunking import score_chunked, split_into_windows

LONG = " ".join(
    f"Sentence {i} talks about rerankers, boundary layers and vaccine trials." for i in range(60)
)


@pytest.fixture
def scorer(tiny_bert):
    return CrossEncoderScorer(tiny_bert, normalize=False, max_length=64)


def test_windows_are_slices_that_cover_the_text(scorer):
    tokenizer = scorer.tokenizer
    pieces = split_into_windows(tokenizer, LONG, 40, overlap=10)
    assert len(pieces) > 3
    assert all(piece in LONG for piece in pieces)
    assert LONG.startswith(pieces[0]) and LONG.endswith(pieces[-1])
    backend = tokenizer.backend_tokenizer
    counts = [len(backend.encode(p, add_special_tokens=False).ids) for p in pieces]
    assert max(counts) <= 40 + 2  # re-tokenizing a slice may differ at its edges
    # Consecutive windows share text (the overlap).
    for left, right in itertools.pairwise(pieces):
        assert LONG.index(right) < LONG.index(left) + len(left)


def test_short_text_is_one_window(scorer):
    assert split_into_windows(scorer.tokenizer, "short text", 40) == ["short text"]


def test_bad_window_arguments_are_named(scorer):
    with pytest.raises(ValueError, match="overlap"):
        split_into_windows(scorer.tokenizer, LONG, 10, overlap=10)
    with pytest.raises(ValueError, match="window_tokens"):
        split_into_windows(scorer.tokenizer, LONG, 0)
    with pytest.raises(ValueError, match="aggregate"):
        score_chunked(scorer, "q", [LONG], aggregate="median")


def test_max_aggregation_equals_best_window_score(scorer):
    query = "vaccine trials"
    scores = score_chunked(scorer, query, [LONG, "A short passage."], overlap=8)
    assert scores.window_counts[0] > 1 and scores.window_counts[1] == 1
    assert scores.windows == sum(scores.window_counts)
    # Rebuild the windows the same way and score them directly: the max must match.
    backend = scorer.tokenizer.backend_tokenizer
    q_tokens = len(backend.encode(query, add_special_tokens=False).ids)
    window = 64 - scorer.tokenizer.num_special_tokens_to_add(pair=True) - q_tokens - 2
    pieces = split_into_windows(scorer.tokenizer, LONG, window, overlap=8)
    direct = scorer.score(query, pieces)
    assert len(pieces) == scores.window_counts[0]
    assert scores[0] == pytest.approx(max(direct), abs=1e-6)
    assert scores.best_window[0] == direct.index(max(direct))
    assert scores[1] == pytest.approx(scorer.score(query, ["A short passage."])[0], abs=1e-6)
    mean = score_chunked(scorer, query, [LONG], overlap=8, aggregate="mean")
    assert mean[0] == pytest.approx(sum(direct) / len(direct), abs=1e-6)


def test_windows_fit_without_truncation(scorer, caplog):
    with caplog.at_level("WARNING", logger="bge_rerank_plugins.scorer"):
        score_chunked(scorer, "what do rerankers do", [LONG, LONG[:500]])
    assert "Truncated" not in caplog.text


def test_records_use_the_scorer_template(tiny_bert):
    scorer = CrossEncoderScorer(tiny_bert, normalize=False, max_length=64, template="{title}")
    by_record = score_chunked(scorer, "q", [{"title": LONG, "text": "ignored"}])
    by_text = score_chunked(
        CrossEncoderScorer(tiny_bert, normalize=False, max_length=64), "q", [LONG]
    )
    assert by_record[0] == pytest.approx(by_text[0], abs=1e-6)
