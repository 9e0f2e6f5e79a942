"""CrossEncoderScorer: exactness against the peers, precision, batching, length, fields, errors."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bge_rerank_plugins import CrossEncoderScorer, ModelNotFoundError, PassageTemplate
from bge_rerank_plugins.batching import padded_tokens, plan_batches
from bge_rerank_plugins.runtime.backends.torch import TorchRunner, run_model
from bge_rerank_plugins.runtime.loading import load_cross_encoder
from bge_rerank_plugins.testing import SAMPLE_PASSAGES, SAMPLE_QUERY

QUERY, PASSAGES = SAMPLE_QUERY, list(SAMPLE_PASSAGES)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------ 1. exact scores
def _peer_scores(model_dir: Path, pairs: list[tuple[str, str]], max_length: int):
    from FlagEmbedding import FlagReranker
    from sentence_transformers import CrossEncoder

    st = CrossEncoder(str(model_dir), max_length=max_length, activation_fn=torch.nn.Identity())
    st_scores = st.predict(pairs, batch_size=2, show_progress_bar=False).tolist()
    flag = FlagReranker(str(model_dir), use_fp16=False, devices="cpu")
    flag_scores = flag.compute_score([list(p) for p in pairs], max_length=max_length, batch_size=2)
    return st_scores, flag_scores


def _assert_matches_peers(model_dir: Path, max_length: int = 512) -> None:
    pairs = [(QUERY, p) for p in PASSAGES]
    scorer = CrossEncoderScorer(model_dir, normalize=False, max_length=max_length, batch_size=3)
    ours = scorer.score(QUERY, PASSAGES)
    st_scores, flag_scores = _peer_scores(model_dir, pairs, max_length)
    assert ours == pytest.approx(st_scores, abs=1e-4)
    assert ours == pytest.approx(flag_scores, abs=1e-4)
    normalized = scorer.score(QUERY, PASSAGES, normalize=True)
    assert normalized == pytest.approx([_sigmoid(x) for x in ours], abs=1e-7)
    # the scores are not all alike, so the comparison above is not vacuous
    assert max(ours) - min(ours) > 1e-3


def test_raw_logits_equal_sentence_transformers_and_flagembedding(tiny_model: Path) -> None:
    _assert_matches_peers(tiny_model)


def test_equal_to_peers_when_flagembedding_truncates_the_passage(tiny_xlmr: Path) -> None:
    """With passages cut (only_second), FlagReranker and we agree token for token."""
    from FlagEmbedding import FlagReranker

    scorer = CrossEncoderScorer(tiny_xlmr, normalize=False, max_length=48)
    ours = scorer.score(QUERY, PASSAGES)
    flag = FlagReranker(str(tiny_xlmr), use_fp16=False, devices="cpu")
    theirs = flag.compute_score([[QUERY, p] for p in PASSAGES], max_length=48)
    assert ours == pytest.approx(theirs, abs=1e-4)


@pytest.mark.minilm
def test_real_minilm_matches_peers(minilm_model: Path) -> None:
    _assert_matches_peers(minilm_model)


# ------------------------------------------------------------------ 2. precision
def test_fp16_on_cpu_falls_back_to_fp32_with_one_notice(tiny_bert: Path, caplog) -> None:
    reference = CrossEncoderScorer(tiny_bert, dtype="float32").score(QUERY, PASSAGES)
    with caplog.at_level(logging.INFO, logger="bge_rerank_plugins"):
        half = CrossEncoderScorer(tiny_bert, use_fp16=True, device="cpu")
        scores = half.score(QUERY, PASSAGES)
    assert half.dtype == torch.float32
    notices = [r for r in caplog.records if "float16 is not supported" in r.getMessage()]
    assert len(notices) == 1
    assert scores == reference
    assert CrossEncoderScorer(tiny_bert, dtype="float16").dtype == torch.float32


def test_bfloat16_runs_on_cpu_and_stays_close(tiny_bert: Path) -> None:
    reference = CrossEncoderScorer(tiny_bert, normalize=False).score(QUERY, PASSAGES)
    bf16 = CrossEncoderScorer(tiny_bert, dtype="bfloat16", normalize=False)
    assert bf16.dtype == torch.bfloat16
    assert bf16.score(QUERY, PASSAGES) == pytest.approx(reference, abs=0.1)


def test_non_finite_half_precision_batch_is_rescored_in_fp32(tiny_bert: Path, caplog) -> None:
    reference = CrossEncoderScorer(tiny_bert, normalize=False).score(QUERY, PASSAGES)
    loaded = load_cross_encoder(tiny_bert, dtype="bfloat16")

    def overflowing(model, tensors):
        logits = run_model(model, tensors)
        if next(model.parameters()).dtype == torch.bfloat16:
            return torch.full_like(logits, float("nan"))
        return logits

    scorer = CrossEncoderScorer(
        tiny_bert,
        dtype="bfloat16",
        normalize=False,
        batch_size=2,
        runner=TorchRunner(loaded, forward=overflowing),
    )
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins"):
        scores = scorer.score(QUERY, PASSAGES)
    assert scores == pytest.approx(reference, abs=1e-5)
    assert any("rescoring it in float32" in r.getMessage() for r in caplog.records)


def test_dtype_arguments_are_checked(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        CrossEncoderScorer(tiny_bert, dtype="int4")
    with pytest.raises(ValueError, match="use_fp16=True conflicts with dtype"):
        CrossEncoderScorer(tiny_bert, use_fp16=True, dtype="bfloat16")


# ------------------------------------------------------------------ 3. batching
def test_plan_batches_respects_budget_and_covers_every_index() -> None:
    lengths = [5, 300, 17, 512, 40, 41, 8, 260, 1000]
    batches = plan_batches(lengths, batch_size=3, token_budget=600)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 600
    assert batches[0] == [8]  # longest first, alone since it exceeds the budget
    # sorting wastes far less than padding everything to the longest pair
    assert padded_tokens(lengths, batches) < max(lengths) * len(lengths) / 2
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches(lengths, batch_size=0, token_budget=10)


def test_input_order_is_kept_across_length_sorted_batches(tiny_xlmr: Path) -> None:
    one_at_a_time = CrossEncoderScorer(tiny_xlmr, batch_size=1)
    expected = [one_at_a_time.score(QUERY, [p])[0] for p in PASSAGES]
    batched = CrossEncoderScorer(tiny_xlmr, batch_size=2, token_budget=64)
    assert batched.score(QUERY, PASSAGES) == pytest.approx(expected, abs=1e-5)


def test_out_of_memory_halves_the_batch_and_drops_nothing(tiny_bert: Path, caplog) -> None:
    reference = CrossEncoderScorer(tiny_bert, batch_size=1).score(QUERY, PASSAGES * 3)
    real_runner = CrossEncoderScorer(tiny_bert).runner
    seen: list[int] = []

    def small_memory(tensors):
        rows = tensors["input_ids"].shape[0]
        seen.append(rows)
        if rows > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_runner(tensors)

    scorer = CrossEncoderScorer(tiny_bert, batch_size=8, runner=small_memory)
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins"):
        scores = scorer.score(QUERY, PASSAGES * 3)
    assert scores == pytest.approx(reference, abs=1e-5)
    assert len(scores) == 15
    assert max(seen) == 8 and 2 in seen
    assert any("Out of memory" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ 4. length
def test_auto_max_length_is_the_95th_percentile_rounded_up(tiny_bert: Path) -> None:
    scorer = CrossEncoderScorer(tiny_bert, max_length="auto")
    lengths = list(range(1, 101))  # 95th percentile = 95 -> 96
    assert scorer.resolve_max_length(lengths) == 96
    assert scorer.resolve_max_length([5000] * 10) == scorer.model_max_length == 512
    assert scorer.resolve_max_length([3]) == 8


def _capturing(scorer: CrossEncoderScorer) -> tuple[CrossEncoderScorer, list[list[int]]]:
    """The same scorer with a spy runner, and the token rows that spy sees."""
    captured: list[list[int]] = []
    real_runner = scorer.runner

    def spy(tensors):
        ids, mask = tensors["input_ids"], tensors["attention_mask"]
        captured.extend(row[m.bool()].tolist() for row, m in zip(ids, mask))
        return real_runner(tensors)

    return CrossEncoderScorer.from_config(scorer.config, runner=spy), captured


def test_truncation_keeps_the_query_and_warns_once_with_the_count(tiny_bert: Path, caplog) -> None:
    scorer = CrossEncoderScorer(tiny_bert, max_length=32)
    scorer, captured = _capturing(scorer)
    query_ids = scorer.tokenizer(QUERY, add_special_tokens=False)["input_ids"]
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins"):
        scorer.score(QUERY, PASSAGES)
    warnings = [r.getMessage() for r in caplog.records if "Truncated" in r.getMessage()]
    assert len(warnings) == 1
    long_ones = sum(len(scorer.tokenizer(QUERY, p)["input_ids"]) > 32 for p in PASSAGES)
    assert long_ones >= 2
    assert f"Truncated {long_ones} of {len(PASSAGES)} pairs to max_length=32" in warnings[0]
    assert all(len(ids) <= 32 for ids in captured)
    for ids in captured:  # [CLS] query [SEP] passage [SEP]: the query is intact
        assert ids[1 : 1 + len(query_ids)] == query_ids


def test_no_warning_when_nothing_is_truncated(tiny_bert: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins"):
        CrossEncoderScorer(tiny_bert).score(QUERY, PASSAGES[:1])
    assert not [r for r in caplog.records if "Truncated" in r.getMessage()]


def test_query_max_length_caps_a_very_long_query(tiny_xlmr: Path, caplog) -> None:
    scorer = CrossEncoderScorer(tiny_xlmr, max_length=40, query_max_length=10)
    scorer, captured = _capturing(scorer)
    long_query = "what is the capital of China " * 20
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins"):
        scores = scorer.score(long_query, PASSAGES[:2])
    assert len(scores) == 2
    assert all(len(ids) <= 40 for ids in captured)
    # the passage still gets the rest of the room
    assert all(len(ids) > 10 + 4 for ids in captured)
    assert any("query_max_length=10" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["tiny_bert", "tiny_xlmr"])
def test_lengths_ignore_padding_left_on_the_shared_tokenizer(kind: str, request, caplog) -> None:
    # transformers leaves the backend padding on after tokenizer(..., padding=True); the load-time
    # first-token check makes such a call. Token counts once came back padded to the longest
    # text, so every pair looked truncated and a short query next to a long one was "cut" to "".
    scorer = CrossEncoderScorer(request.getfixturevalue(kind), max_length=64, query_max_length=6)
    scorer, captured = _capturing(scorer)
    short_query, long_query = "panda", "what do giant pandas eat in the wild every day"
    pairs = [(short_query, PASSAGES[0]), (long_query, PASSAGES[0]), (short_query, "bamboo")]
    scorer.tokenizer([short_query, long_query], padding=True)
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins"):
        after_padding = scorer.score_pairs(pairs)
    warnings = [r.getMessage() for r in caplog.records if "Truncated" in r.getMessage()]
    assert after_padding == scorer.score_pairs(pairs)
    short_ids = scorer.tokenizer(short_query, add_special_tokens=False)["input_ids"]
    first_call = captured[: len(pairs)]
    assert sum(ids[1 : 1 + len(short_ids)] == short_ids for ids in first_call) == 2
    assert len(warnings) == 1
    assert "Truncated 0 of 3 pairs" in warnings[0] and "1 pairs had a query longer" in warnings[0]


# ------------------------------------------------------------------ 5. fields
def test_templates_render_records_and_skip_missing_fields() -> None:
    template = PassageTemplate("{title}\n{abstract}\n{text}")
    assert template.render({"title": "T", "abstract": None, "text": "body"}) == "T\nbody"
    assert template.render({"abstract": "A", "text": "body"}) == "A\nbody"
    assert "None" not in template.render({"title": "T", "abstract": None})
    listed = PassageTemplate(["title", "section", "text"], separator=" | ")
    assert listed.render({"title": "T", "text": "x", "section": ""}) == "T | x"

    class Node:  # the shape of a LangChain Document / LlamaIndex node
        def __init__(self) -> None:
            self.page_content = "the content"
            self.metadata = {"title": "Meta title"}

    assert PassageTemplate("{title}: {text}").render(Node()) == "Meta title: the content"
    with pytest.raises(ValueError, match="template"):
        PassageTemplate("no fields here")


def test_scorer_scores_records_through_the_template(tiny_bert: Path) -> None:
    records = [
        {"title": "Beijing", "text": "The capital of China."},
        {"title": "Tax", "abstract": None, "text": "Capital gains."},
    ]
    scorer = CrossEncoderScorer(tiny_bert, template="{title}\n{abstract}\n{text}")
    as_text = ["Beijing\nThe capital of China.", "Tax\nCapital gains."]
    assert scorer.passage_text(records[1]) == as_text[1]
    assert scorer.score(QUERY, records) == scorer.score(QUERY, as_text)
    # without a template a record contributes its title and text
    plain = CrossEncoderScorer(tiny_bert)
    assert plain.passage_text({"title": "T", "text": "x", "url": "u"}) == "T\nx"


# ------------------------------------------------------------------ 6. normalization
def test_normalized_scores_are_python_floats_in_unit_interval(tiny_xlmr: Path) -> None:
    scorer = CrossEncoderScorer(tiny_xlmr)
    scores = scorer.score(QUERY, PASSAGES)
    assert all(type(s) is float and 0.0 <= s <= 1.0 for s in scores)
    raw = CrossEncoderScorer(tiny_xlmr, normalize=False).score(QUERY, PASSAGES)
    assert all(type(s) is float for s in raw)
    assert scores == pytest.approx([_sigmoid(x) for x in raw], abs=1e-7)


# ------------------------------------------------------------------ 7. API
def test_rank_score_pairs_and_score_many_agree(tiny_bert: Path) -> None:
    scorer = CrossEncoderScorer(tiny_bert)
    scores = scorer.score(QUERY, PASSAGES)
    ranked = scorer.rank(QUERY, PASSAGES)
    assert [r.score for r in ranked] == sorted(scores, reverse=True)
    assert all(PASSAGES[r.index] == r.passage and scores[r.index] == r.score for r in ranked)
    assert scorer.rank(QUERY, PASSAGES, top_k=2) == ranked[:2]
    assert scorer.score_pairs([(QUERY, p) for p in PASSAGES]) == pytest.approx(scores, abs=1e-6)
    other = "pandas dataframe library"
    many = scorer.score_many([QUERY, other], [PASSAGES, PASSAGES[:2]])
    assert many[0] == pytest.approx(scores, abs=1e-6)
    assert many[1] == pytest.approx(scorer.score(other, PASSAGES[:2]), abs=1e-6)
    with pytest.raises(ValueError, match="same length"):
        scorer.score_many([QUERY], [PASSAGES, PASSAGES])


def test_same_model_is_loaded_once_per_process(tiny_bert: Path) -> None:
    first = CrossEncoderScorer(tiny_bert, normalize=True)
    second = CrossEncoderScorer(str(tiny_bert), normalize=False, batch_size=4)
    assert first.model is second.model
    assert CrossEncoderScorer(tiny_bert, dtype="bfloat16").model is not first.model


def test_score_cache_reuses_scores_and_is_bounded(tiny_bert: Path) -> None:
    calls: list[int] = []
    real_runner = CrossEncoderScorer(tiny_bert).runner

    def counting(tensors):
        calls.append(tensors["input_ids"].shape[0])
        return real_runner(tensors)

    scorer = CrossEncoderScorer(tiny_bert, cache_size=4, runner=counting)
    first = scorer.score(QUERY, PASSAGES[:3])
    assert sum(calls) == 3
    assert scorer.score(QUERY, PASSAGES[:3]) == first
    assert sum(calls) == 3  # all from the cache
    scorer.score(QUERY, PASSAGES)  # 2 new pairs; the cache keeps the 4 most recent
    assert len(scorer.cache) == 4
    assert sum(calls) == 5


# ------------------------------------------------------------------ 8. errors
def test_bad_passages_raise_type_error_naming_the_index(tiny_bert: Path) -> None:
    scorer = CrossEncoderScorer(tiny_bert)
    with pytest.raises(TypeError, match=r"passages\[1\] is None"):
        scorer.score(QUERY, ["fine", None])
    with pytest.raises(TypeError, match=r"passages\[2\] has type int"):
        scorer.score(QUERY, ["a", "b", 7])
    with pytest.raises(TypeError, match=r"candidates\[1\]\[0\] is None"):
        scorer.score_many([QUERY, QUERY], [["a"], [None]])
    with pytest.raises(TypeError, match="query must be a string"):
        scorer.score(None, ["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wrap it in a list"):
        scorer.score(QUERY, "a single string")
    assert scorer.score(QUERY, []) == []
    assert scorer.rank(QUERY, []) == []
    assert scorer.score_many([], []) == []


def test_unknown_model_offline_says_how_to_pass_a_local_directory() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        CrossEncoderScorer("BAAI/no-such-reranker-anywhere")
    message = str(info.value)
    assert "model='BAAI/no-such-reranker-anywhere'" in message
    assert "offline" in message and "local" in message
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        CrossEncoderScorer("./definitely/not/here")


def test_constructor_arguments_are_validated(tiny_bert: Path) -> None:
    for kwargs, name in [
        ({"batch_size": 0}, "batch_size"),
        ({"max_length": 4}, "max_length"),
        ({"max_length": "long"}, "max_length"),
        ({"query_max_length": 0}, "query_max_length"),
        ({"cache_size": -1}, "cache_size"),
        ({"token_budget": 0}, "token_budget"),
    ]:
        with pytest.raises(ValueError, match=name):
            CrossEncoderScorer(tiny_bert, **kwargs)
    with pytest.raises(TypeError, match="unexpected keyword"):
        CrossEncoderScorer(tiny_bert, max_lenght=128)  # type: ignore[call-arg]


def test_remote_code_is_off_unless_asked(tiny_bert: Path, monkeypatch) -> None:
    import transformers

    seen: dict[str, object] = {}
    real = transformers.AutoModelForSequenceClassification.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", spy)
    CrossEncoderScorer(tiny_bert)
    assert seen["trust_remote_code"] is False


def test_importing_the_package_loads_no_framework() -> None:
    code = (
        "import sys, bge_rerank_plugins;"
        "heavy = [m for m in ('torch', 'transformers', 'llama_index', 'langchain_core',"
        " 'FlagEmbedding', 'sentence_transformers', 'fastapi', 'ray') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_template_separators_only_between_present_fields() -> None:
    assert PassageTemplate("{title}: {text}").render({"text": "no title"}) == "no title"
    assert PassageTemplate("{title}: {text}").render({"title": "T"}) == "T"
    three = PassageTemplate("{title} | {section} | {text}.")
    assert three.render({"title": "T", "text": "x"}) == "T | x."
    assert three.render({"title": "T", "section": "S"}) == "T | S"
    labelled = PassageTemplate("Title: {title}\nBody: {text}")
    assert labelled.render({"title": "T"}) == "Title: T"
    assert labelled.render({"title": "T", "text": "b"}) == "Title: T\nBody: b"


@pytest.mark.parametrize("backend", ["torch", "torch-int8"])
def test_score_cli_prints_ranked_json_lines(tiny_bert: Path, capsys, backend: str) -> None:
    import json

    from bge_rerank_plugins.cli import main

    passages = ["a cat on a mat", "quantum field theory", "cats sleep a lot"]
    args = ["score", "--model", str(tiny_bert), "--query", "cats", *passages]
    assert main([*args, "--raw", "--backend", backend]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = CrossEncoderScorer(tiny_bert, backend=backend).score("cats", passages, normalize=False)
    assert sorted(r["index"] for r in rows) == [0, 1, 2]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    for row in rows:
        assert row["score"] == pytest.approx(want[row["index"]], rel=1e-5, abs=1e-6)
        assert row["text"] == passages[row["index"]]
    with pytest.raises(SystemExit):
        main([*args, "--backend", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err
