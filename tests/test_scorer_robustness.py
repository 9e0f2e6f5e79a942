"""No silent wrong answers, no lost data: the scorer, loading and adapters refuse what they
cannot score correctly (issue 19). Each test here failed before its fix."""

from __future__ import annotations

import copy
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from bge_rerank_plugins import CrossEncoderScorer, PassageTemplate
from bge_rerank_plugins.errors import (
    DeviceUnavailableError,
    ModelFilesError,
    NonFiniteScoreError,
    RerankerError,
)
from bge_rerank_plugins.runtime.backends.torch import TorchRunner, run_model
from bge_rerank_plugins.runtime.loading import load_cross_encoder

QUERY = "what is the capital of China"
PASSAGES = ["Beijing is the capital of China.", "Apples are a fruit.", "Capital gains tax."]


def _nan_forward(real):
    """``real`` (a runner, or a torch forward taking the model first) with a NaN per batch."""

    def forward(*args):
        logits = real(*args)
        logits[0, 0] = float("nan")  # the first pair of each batch
        return logits

    return forward


# ------------------------------------------------------------------ non-finite scores
@pytest.mark.parametrize("normalize", [True, False])
def test_nan_scores_raise_naming_the_count(tiny_bert: Path, normalize: bool) -> None:
    runner = _nan_forward(CrossEncoderScorer(tiny_bert).runner)
    scorer = CrossEncoderScorer(
        tiny_bert, batch_size=2, normalize=normalize, cache_size=16, runner=runner
    )
    with pytest.raises(NonFiniteScoreError, match=r"2 of 3 pairs") as info:
        scorer.score(QUERY, PASSAGES)
    assert isinstance(info.value, RerankerError) and isinstance(info.value, ValueError)
    assert "weights" in str(info.value) and "float32" in str(info.value)
    # nothing non-finite was cached for the next call to return silently
    assert len(scorer.cache) == 0


def test_inf_logit_is_an_error_too(tiny_bert: Path) -> None:
    real = CrossEncoderScorer(tiny_bert).runner

    def runner(tensors):
        logits = real(tensors)
        logits[-1, 0] = float("inf")
        return logits

    scorer = CrossEncoderScorer(tiny_bert, normalize=False, runner=runner)
    with pytest.raises(NonFiniteScoreError, match="1 of 3 pairs"):
        scorer.rank(QUERY, PASSAGES)


def test_half_precision_nan_that_float32_also_gives_is_an_error(tiny_bert: Path) -> None:
    # NaN in bfloat16 and again in the float32 rescue: the torch runner's own forward seam.
    loaded = load_cross_encoder(tiny_bert, dtype="bfloat16")
    runner = TorchRunner(loaded, forward=_nan_forward(run_model))
    scorer = CrossEncoderScorer(tiny_bert, dtype="bfloat16", runner=runner)
    with pytest.raises(NonFiniteScoreError, match="bfloat16 and again in float32"):
        scorer.score(QUERY, PASSAGES)


def test_model_whose_weights_are_nan_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    model.save_pretrained(tmp_path / "broken")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "broken")
    with pytest.raises(NonFiniteScoreError, match="3 of 3 pairs"):
        CrossEncoderScorer(tmp_path / "broken").score(QUERY, PASSAGES)


# ------------------------------------------------------------------ model folders
def _copy_model(src: Path, dst: Path, keep: set[str]) -> Path:
    dst.mkdir()
    for name in keep:
        shutil.copy(src / name, dst / name)
    return dst


def test_folder_without_tokenizer_files_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    folder = _copy_model(tiny_bert, tmp_path / "no-tok", {"config.json", "model.safetensors"})
    with pytest.raises(ModelFilesError) as info:
        CrossEncoderScorer(folder)
    message = str(info.value)
    assert str(folder) in message and "tokenizer.json" in message and "vocab.txt" in message


def test_tokenizer_of_special_tokens_only_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    """Whatever the files, a tokenizer with no real vocabulary maps every word to [UNK]."""
    from transformers import BertTokenizerFast

    folder = _copy_model(tiny_bert, tmp_path / "empty-vocab", {"config.json", "model.safetensors"})
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    assert len(BertTokenizerFast.from_pretrained(folder)) == 5  # what used to load
    with pytest.raises(ModelFilesError, match="only 5 tokens"):
        CrossEncoderScorer(folder)


def test_empty_folder_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFilesError, match="is empty") as info:
        CrossEncoderScorer(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    assert isinstance(info.value, OSError)


def test_folder_without_config_points_to_a_model_subfolder(tiny_bert: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_bert, tmp_path / "parent" / "reranker")
    with pytest.raises(ModelFilesError, match=r"no config.json.*reranker"):
        CrossEncoderScorer(tmp_path / "parent")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_broken_weights_file_names_the_path(tiny_bert: Path, tmp_path: Path, damage: str) -> None:
    folder = tmp_path / damage
    shutil.copytree(tiny_bert, folder)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"not a safetensors file" * 8)
    else:
        weights.unlink()
    with pytest.raises(ModelFilesError) as info:
        CrossEncoderScorer(folder)
    message = str(info.value)
    assert str(folder.resolve()) in message and "weights" in message
    assert "\n" not in message


# ------------------------------------------------------------------ records and templates
def test_record_without_text_field_is_an_error_not_empty_text(tiny_bert: Path) -> None:
    scorer = CrossEncoderScorer(tiny_bert)
    records = [{"title": "Beijing", "text": "The capital."}, {"id": 7, "body": "Dropped?"}]
    with pytest.raises(ValueError, match=r"passages\[1\] .*without a 'text' field.*body"):
        scorer.score(QUERY, records)
    with pytest.raises(ValueError, match=r"candidates\[0\]\[1\]"):
        scorer.score_many([QUERY], [records])
    # naming the field fixes it
    fixed = CrossEncoderScorer(tiny_bert, template="{body}")
    assert len(fixed.score(QUERY, [{"body": "The capital."}])) == 1


def test_template_with_all_fields_missing_is_an_error(tiny_bert: Path) -> None:
    scorer = CrossEncoderScorer(tiny_bert, template="{headline}\n{summary}")
    with pytest.raises(ValueError, match=r"passages\[0\] has none of the template's fields"):
        scorer.score(QUERY, [{"title": "T", "text": "body"}])
    # one field present is enough: missing fields are skipped as documented
    assert len(scorer.score(QUERY, [{"summary": "s"}])) == 1


def test_records_with_blank_fields_are_scored_with_a_counted_warning(
    tiny_bert: Path, caplog
) -> None:
    scorer = CrossEncoderScorer(tiny_bert)
    records = [{"title": "", "text": ""}, {"title": "T", "text": "body"}, {"text": "  "}]
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins"):
        scores = scorer.score(QUERY, records)
    assert len(scores) == 3
    warnings = [r.getMessage() for r in caplog.records if "blank" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("2 of 3 passages")


def test_plain_empty_string_passages_are_scored_silently(tiny_bert: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins"):
        assert len(CrossEncoderScorer(tiny_bert).score(QUERY, ["", "x"])) == 2
    assert not [r for r in caplog.records if "blank" in r.getMessage()]


def test_template_render_itself_still_skips_missing_fields() -> None:
    """The lower-level render keeps its documented behaviour (BEIR corpora rely on it)."""
    assert PassageTemplate("{headline}").render({"text": "x"}) == ""
    assert PassageTemplate("{title}\n{text}").present_fields({"text": "x"}) == ("text",)


# ------------------------------------------------------------------ devices
def test_unknown_device_spelling_lists_the_valid_ones(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match=r"device='gpu'.*did you mean device='cuda'.*cpu, cuda"):
        CrossEncoderScorer(tiny_bert, device="gpu")
    with pytest.raises(TypeError, match="device must be a string"):
        CrossEncoderScorer(tiny_bert, device=0)  # type: ignore[arg-type]


def test_cuda_without_a_gpu_says_to_use_cpu(tiny_bert: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(DeviceUnavailableError, match="no CUDA device is visible") as info:
            CrossEncoderScorer(tiny_bert, device=device)
        assert "device='cpu'" in str(info.value)
        assert isinstance(info.value, ValueError)


def test_cuda_index_past_the_visible_gpus(tiny_bert: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceUnavailableError, match=r"only 1 CUDA device is visible \(cuda:0"):
        CrossEncoderScorer(tiny_bert, device="cuda:1")


def test_torch_device_objects_are_accepted(tiny_bert: Path) -> None:
    assert CrossEncoderScorer(tiny_bert, device=torch.device("cpu")).device == "cpu"


# ------------------------------------------------------------------ passages argument
def test_passages_none_or_not_a_collection_is_a_clear_type_error(tiny_bert: Path) -> None:
    scorer = CrossEncoderScorer(tiny_bert)
    with pytest.raises(TypeError, match=r"passages must be a list of passages.*got None"):
        scorer.score(QUERY, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"passages must be a list .*got None"):
        scorer.rank(QUERY, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got int"):
        scorer.score(QUERY, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"single record \(dict\); wrap it in a list"):
        scorer.score(QUERY, {"title": "T", "text": "x"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="single str; wrap it in a list"):
        scorer.rank(QUERY, "one passage")
    with pytest.raises(TypeError, match="pairs must be a list"):
        scorer.score_pairs(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"candidates must be a list .*got None"):
        scorer.score_many([QUERY], None)  # type: ignore[arg-type]


def test_a_generator_of_passages_is_read_once(tiny_bert: Path) -> None:
    scorer = CrossEncoderScorer(tiny_bert)
    want = scorer.score(QUERY, PASSAGES)
    assert scorer.score(QUERY, (p for p in PASSAGES)) == want
    ranked = scorer.rank(QUERY, iter(PASSAGES), top_k=2)
    assert [r.passage for r in ranked] == [PASSAGES[r.index] for r in ranked]
    assert scorer.score_many([QUERY], (list(PASSAGES) for _ in range(1))) == [want]


def test_a_langchain_document_as_the_passages_argument(tiny_bert: Path) -> None:
    from langchain_core.documents import Document

    scorer = CrossEncoderScorer(tiny_bert)
    with pytest.raises(TypeError, match=r"single record \(Document\)"):
        scorer.score(QUERY, Document(page_content="x"))  # type: ignore[arg-type]
    # a list of documents is fine: they are records
    assert len(scorer.score(QUERY, [Document(page_content="x")])) == 1


# ------------------------------------------------------------------ flags and counts
def test_bools_are_not_counts_and_normalize_must_be_a_bool(tiny_bert: Path) -> None:
    for kwargs, name in [
        ({"batch_size": True}, "batch_size"),
        ({"token_budget": True}, "token_budget"),
        ({"query_max_length": True}, "query_max_length"),
        ({"cache_size": True}, "cache_size"),
    ]:
        with pytest.raises(ValueError, match=name):
            CrossEncoderScorer(tiny_bert, **kwargs)
    with pytest.raises(TypeError, match=r"normalize must be True .* or False .* got str 'no'"):
        CrossEncoderScorer(tiny_bert, normalize="no")  # type: ignore[arg-type]
    scorer = CrossEncoderScorer(tiny_bert)
    with pytest.raises(TypeError, match="normalize must be"):
        scorer.score(QUERY, PASSAGES, normalize="false")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_k"):
        scorer.rank(QUERY, PASSAGES, top_k=True)  # type: ignore[arg-type]


# ------------------------------------------------------------------ inputs are not mutated
def test_inputs_are_never_mutated(tiny_bert: Path) -> None:
    scorer = CrossEncoderScorer(tiny_bert, template="{title}\n{text}")
    records = [
        {"title": "Beijing", "text": "The capital.", "metadata": {"source": "a"}},
        {"title": "Apples", "text": ""},
    ]
    before = copy.deepcopy(records)
    passages = list(records)
    ranked = scorer.rank(QUERY, passages)
    assert records == before and passages == records
    assert {id(r.passage) for r in ranked} == {id(r) for r in records}


def test_scores_stay_finite_numbers(tiny_bert: Path) -> None:
    """The non-finite check does not change good scores (every value finite, in [0, 1])."""
    scores = CrossEncoderScorer(tiny_bert).score(QUERY, PASSAGES)
    assert all(math.isfinite(s) and 0 <= s <= 1 for s in scores)


# ------------------------------------------------------------------ adapters
@pytest.fixture()
def shared(tiny_bert: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(tiny_bert)


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_score_threshold_is_refused(threshold: float) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from pydantic import ValidationError

    from bge_rerank_plugins.langchain import BGERerankCompressor
    from bge_rerank_plugins.llama_index import BGEReranker

    for cls in (BGERerankCompressor, BGEReranker):
        with pytest.raises(ValidationError, match="score_threshold must be a finite number"):
            cls(score_threshold=threshold)


def test_threshold_above_one_with_normalized_scores_is_refused(shared) -> None:
    pytest.importorskip("langchain_core")
    from pydantic import ValidationError

    from bge_rerank_plugins.langchain import BGERerankCompressor

    with pytest.raises(ValidationError, match=r"above 1, but normalize=True"):
        BGERerankCompressor(score_threshold=2.0)
    with pytest.raises(ValidationError, match=r"above 1, but normalize=True"):
        BGERerankCompressor(scorer=shared, score_threshold=2.0)
    # raw logits can be above 1
    assert BGERerankCompressor(score_threshold=2.0, normalize=False).score_threshold == 2.0


def test_adapter_counts_reject_bools() -> None:
    pytest.importorskip("langchain_core")
    from pydantic import ValidationError

    from bge_rerank_plugins.langchain import BGECrossEncoder, BGERerankCompressor

    for kwargs in ({"batch_size": True}, {"top_n": True}, {"max_length": True}):
        with pytest.raises(ValidationError, match="not a bool"):
            BGERerankCompressor(**kwargs)
    with pytest.raises(ValidationError, match="not a bool"):
        BGECrossEncoder(batch_size=True)


def test_langchain_strings_instead_of_documents(shared) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from bge_rerank_plugins.langchain import BGERerankCompressor

    compressor = BGERerankCompressor(scorer=shared)
    with pytest.raises(TypeError, match=r"documents\[0\] is a str.*Document\(page_content=text\)"):
        compressor.compress_documents(["a plain string"], QUERY)
    with pytest.raises(TypeError, match="got a single str; wrap it in a list"):
        compressor.compress_documents("a plain string", QUERY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got a single Document"):
        compressor.compress_documents(Document(page_content="x"), QUERY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got NoneType"):
        compressor.compress_documents(None, QUERY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="query must be a string"):
        compressor.compress_documents([Document(page_content="x")], None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"documents\[0\] is a str"):
        asyncio_run(compressor.acompress_documents(["x"], QUERY))
    # a generator of documents is read once
    docs = [Document(page_content=p) for p in PASSAGES]
    out = compressor.compress_documents((d for d in docs), QUERY)
    assert {d.page_content for d in out} <= set(PASSAGES) and len(out) == 3


def asyncio_run(coroutine):
    import asyncio

    return asyncio.run(coroutine)


def test_langchain_template_with_no_present_field_is_an_error(shared) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from bge_rerank_plugins.langchain import BGERerankCompressor

    compressor = BGERerankCompressor(scorer=shared, template="{title}\n{section}")
    docs = [Document(page_content="x", metadata={"title": "T"}), Document(page_content="y")]
    with pytest.raises(ValueError, match=r"record 1 has none of its fields title, section"):
        compressor.compress_documents(docs, QUERY)
    assert docs[1].metadata == {}


def test_llama_index_wrong_node_types(shared) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    from bge_rerank_plugins.llama_index import BGEReranker

    reranker = BGEReranker(scorer=shared)
    with pytest.raises(TypeError, match=r"nodes\[0\] is a str.*TextNode\(text=text\)"):
        reranker.postprocess_nodes(["plain text"], query_str=QUERY)
    with pytest.raises(TypeError, match=r"nodes\[0\] is a TextNode.*NodeWithScore\(node=node\)"):
        reranker.postprocess_nodes([TextNode(text="x")], query_str=QUERY)
    with pytest.raises(TypeError, match="nodes must be a list of NodeWithScore, got NoneType"):
        reranker.postprocess_nodes(None, query_str=QUERY)  # type: ignore[arg-type]
    single = NodeWithScore(node=TextNode(text="x"))
    with pytest.raises(TypeError, match="wrap it in a list"):
        reranker.postprocess_nodes(single, query_str=QUERY)  # type: ignore[arg-type]
    templated = BGEReranker(scorer=shared, template="{title}")
    with pytest.raises(ValueError, match="record 0 has none of its fields title"):
        templated.postprocess_nodes([single], query_str=QUERY)


def test_chunked_scoring_checks_its_arguments(shared) -> None:
    from bge_rerank_plugins.chunking import score_chunked

    with pytest.raises(TypeError, match="query must be a string"):
        score_chunked(shared, None, PASSAGES)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"passages must be a list of passages.*got None"):
        score_chunked(shared, QUERY, None)  # type: ignore[arg-type]
    assert len(score_chunked(shared, QUERY, (p for p in PASSAGES))) == 3


def test_score_pairs_names_the_pair_of_a_bad_record(tiny_bert: Path) -> None:
    scorer = CrossEncoderScorer(tiny_bert)
    with pytest.raises(ValueError, match=r"pairs\[1\]\[1\] is a record without a 'text' field"):
        scorer.score_pairs([(QUERY, "fine"), (QUERY, {"body": "lost"})])
    with pytest.raises(TypeError, match=r"pairs\[0\]\[1\] is None"):
        scorer.score_pairs([(QUERY, None)])


@pytest.mark.parametrize("flag", ["normalize", "use_fp16", "trust_remote_code"])
def test_adapters_refuse_strings_and_ints_for_flags(flag: str) -> None:
    """pydantic's lax mode would read "no" as False and 1 as True; a flag is a real bool."""
    from pydantic import ValidationError

    from bge_rerank_plugins.langchain import BGERerankCompressor
    from bge_rerank_plugins.llama_index import BGEReranker

    for adapter in (BGEReranker, BGERerankCompressor):
        for value in ("no", 1):
            with pytest.raises(ValidationError, match=flag):
                adapter(**{flag: value})
