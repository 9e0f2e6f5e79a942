"""The scorer, the LlamaIndex postprocessor and the LangChain adapters give identical scores."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("langchain_core")

from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.langchain import BGECrossEncoder, BGERerankCompressor
from bge_rerank_plugins.llama_index import BGEReranker

QUERY = "What do giant pandas eat?"
RECORDS = [
    ("Giant panda", "Giant pandas eat bamboo almost exclusively."),
    ("Pandas (software)", "pandas is a Python library for tabular data."),
    ("Koala", "Koalas feed on eucalyptus leaves."),
    ("大熊猫", "大熊猫主要以竹子为食。"),
    ("Bamboo", "Some bamboo species grow almost a metre in a day."),
    ("", "A record without a title, scored on its text alone."),
]


def llama_scores(reranker: BGEReranker) -> list[float]:
    # BGEReranker scores get_content(MetadataMode.EMBED), as LlamaIndex's rerankers do; keeping
    # the title out of it scores the same text as the LangChain adapters (the page content).
    nodes = [
        NodeWithScore(
            node=TextNode(
                text=text,
                id_=str(i),
                metadata={"title": title},
                excluded_embed_metadata_keys=["title"],
            ),
            score=0.0,
        )
        for i, (title, text) in enumerate(RECORDS)
    ]
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert len(out) == len(RECORDS)
    by_id = {n.node.node_id: n.score for n in out}
    return [by_id[str(i)] for i in range(len(RECORDS))]


def langchain_scores(compressor: BGERerankCompressor) -> list[float]:
    docs = [
        Document(page_content=text, metadata={"title": title}, id=str(i))
        for i, (title, text) in enumerate(RECORDS)
    ]
    out = compressor.compress_documents(docs, QUERY)
    assert len(out) == len(RECORDS)
    by_id = {d.id: d.metadata["relevance_score"] for d in out}
    return [by_id[str(i)] for i in range(len(RECORDS))]


def check_agreement(model_dir: Path) -> None:
    scorer = CrossEncoderScorer(model_dir, device="cpu")
    texts = [text for _, text in RECORDS]
    expected = scorer.score(QUERY, texts)
    assert len(set(expected)) > 1  # a meaningful comparison, not all ties

    # Each adapter loading its own scorer from the same options...
    own = {"model": model_dir, "device": "cpu", "top_n": None}
    assert llama_scores(BGEReranker(**own)) == expected
    assert langchain_scores(BGERerankCompressor(**own)) == expected
    pairs = [(QUERY, t) for t in texts]
    assert BGECrossEncoder(model=model_dir, device="cpu").score(pairs) == expected

    # ...and all of them sharing one scorer, with a metadata template and raw logits.
    template = "{title}\n{text}"
    records = [{"title": title, "text": text} for title, text in RECORDS]
    raw = CrossEncoderScorer(model_dir, device="cpu", template=template).score(
        QUERY, records, normalize=False
    )
    shared = {"scorer": scorer, "top_n": None, "normalize": False, "template": template}
    assert llama_scores(BGEReranker(**shared)) == raw
    assert langchain_scores(BGERerankCompressor(**shared)) == raw


def test_identical_scores_on_tiny_models(tiny_model: Path) -> None:
    check_agreement(tiny_model)


@pytest.mark.minilm
def test_identical_scores_on_minilm(minilm_model: Path) -> None:
    check_agreement(minilm_model)


def test_one_scorer_serves_both_frameworks(tiny_bert: Path) -> None:
    reranker = BGEReranker(model=tiny_bert, device="cpu")
    compressor = BGERerankCompressor(scorer=reranker.get_scorer())
    encoder = BGECrossEncoder(scorer=compressor.get_scorer())
    assert encoder.get_scorer() is compressor.get_scorer() is reranker.get_scorer()
    assert compressor.model == encoder.model == reranker.model == str(tiny_bert)
    # Separately built adapters on the same model and device share the weights anyway.
    separate = BGERerankCompressor(model=tiny_bert, device="cpu")
    assert separate.get_scorer() is not reranker.get_scorer()
    assert separate.get_scorer().model is reranker.get_scorer().model


def test_adapters_load_the_backend_they_are_given(tiny_bert: Path) -> None:
    from typing import get_args

    from bge_rerank_plugins.adapter_options import ScorerOptions
    from bge_rerank_plugins.runtime.backends import BACKENDS

    assert set(get_args(ScorerOptions.model_fields["backend"].annotation)) == set(BACKENDS)
    texts = [text for _, text in RECORDS]
    int8 = CrossEncoderScorer(tiny_bert, device="cpu", backend="torch-int8").score(QUERY, texts)
    exact = CrossEncoderScorer(tiny_bert, device="cpu").score(QUERY, texts)
    assert int8 != exact  # the two backends are told apart
    options = {"model": tiny_bert, "device": "cpu", "top_n": None, "backend": "torch-int8"}
    assert llama_scores(BGEReranker(**options)) == int8
    assert langchain_scores(BGERerankCompressor(**options)) == int8
    with pytest.raises(ValueError, match="backend"):
        BGEReranker(model=tiny_bert, backend="int8")
    with pytest.raises(ValueError, match="backend: these loading options belong"):
        BGERerankCompressor(scorer=CrossEncoderScorer(tiny_bert), backend="torch-int8")
