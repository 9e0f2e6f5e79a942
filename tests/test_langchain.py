"""BGERerankCompressor and BGECrossEncoder: LangChain adapters on the shared scorer."""

from __future__ import annotations

import asyncio
import runpy
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_classic")

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
from langchain_core.cross_encoders import BaseCrossEncoder
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ValidationError

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.langchain import BGECrossEncoder, BGERerankCompressor

ROOT = Path(__file__).resolve().parents[1]

TOPICS = [
    "giant pandas eat bamboo in the mountains of China",
    "the Eiffel tower is a wrought iron tower in Paris",
    "photosynthesis turns light into chemical energy in plants",
    "the stock market fell after the interest rate decision",
    "a cross-encoder reads the query and the passage together",
    "volcanoes erupt molten rock called lava",
]


def documents(n: int = 8) -> list[Document]:
    return [
        Document(
            page_content=f"Note {i}: {TOPICS[i % len(TOPICS)]}",
            metadata={"title": f"Topic {i % len(TOPICS)}", "source": f"s{i}"},
            id=f"d{i}",
        )
        for i in range(n)
    ]


@pytest.fixture()
def scorer(tiny_xlmr: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(tiny_xlmr, device="cpu")


@pytest.fixture()
def retriever():
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents(documents(24))
    return store.as_retriever(search_kwargs={"k": 10})


# ---------------------------------------------------------------- construction
def test_types_defaults_and_serialization_without_loading(monkeypatch) -> None:
    from bge_rerank_plugins import scorer as scorer_module

    monkeypatch.setattr(
        scorer_module, "load_cross_encoder", lambda *a, **k: pytest.fail("model loaded too early")
    )
    compressor = BGERerankCompressor()
    assert isinstance(compressor, BaseDocumentCompressor)
    assert compressor.model == "BAAI/bge-reranker-v2-m3" and compressor.top_n == 3
    data = compressor.model_dump()
    assert "scorer" not in data
    assert BGERerankCompressor.model_validate(data).model_dump() == data
    configured = BGERerankCompressor(top_n=5, score_threshold=0.2, template=["title", "text"])
    again = BGERerankCompressor.model_validate_json(configured.model_dump_json())
    assert again.model_dump() == configured.model_dump()
    encoder = BGECrossEncoder(normalize=False)
    assert isinstance(encoder, BaseCrossEncoder)
    assert BGECrossEncoder.model_validate(encoder.model_dump()).normalize is False


def test_typos_and_bad_values_are_named(scorer: CrossEncoderScorer) -> None:
    with pytest.raises(ValidationError, match="topn"):
        BGERerankCompressor(topn=3)
    with pytest.raises(ValidationError, match="batch_size"):
        BGERerankCompressor(batch_size=0)
    with pytest.raises(ValidationError, match="top_n"):
        BGECrossEncoder(top_n=3)  # the cross-encoder only scores; CrossEncoderReranker cuts
    with pytest.raises(ValidationError, match="max_length"):
        BGECrossEncoder(scorer=scorer, max_length=128)


# ---------------------------------------------------------------- compressor behaviour
def test_compress_returns_new_sorted_documents(scorer: CrossEncoderScorer) -> None:
    docs = documents()
    before = [(d.page_content, dict(d.metadata), d.id) for d in docs]
    query = "what do pandas eat"
    out = BGERerankCompressor(scorer=scorer, top_n=3).compress_documents(docs, query)
    expected = scorer.score(query, [d.page_content for d in docs])
    best = sorted(range(len(docs)), key=lambda i: (-expected[i], i))[:3]
    assert [d.id for d in out] == [f"d{i}" for i in best]
    assert [d.metadata["relevance_score"] for d in out] == [expected[i] for i in best]
    assert all(type(d.metadata["relevance_score"]) is float for d in out)
    for result, i in zip(out, best):
        assert result is not docs[i]
        assert result.page_content == docs[i].page_content
        assert result.metadata["source"] == docs[i].metadata["source"]
    assert [(d.page_content, dict(d.metadata), d.id) for d in docs] == before
    assert BGERerankCompressor(scorer=scorer).compress_documents([], query) == []


def test_async_matches_sync_and_keeps_the_loop_free(scorer: CrossEncoderScorer) -> None:
    compressor = BGERerankCompressor(scorer=scorer, top_n=4)
    sync = compressor.compress_documents(documents(), "lava")
    forward = scorer.runner

    def slow_runner(tensors):
        time.sleep(0.3)
        return forward(tensors)

    slow = CrossEncoderScorer.from_config(scorer.config, runner=slow_runner)
    compressor = BGERerankCompressor(scorer=slow, top_n=4)
    ticks = 0

    async def main():
        nonlocal ticks
        task = asyncio.create_task(compressor.acompress_documents(documents(), "lava"))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.01)
        return await task

    result = asyncio.run(main())
    assert ticks >= 10
    assert [(d.id, d.metadata) for d in result] == [(d.id, d.metadata) for d in sync]
    assert asyncio.run(compressor.acompress_documents([], "lava")) == []


def test_threshold_top_n_none_and_raw_logits(scorer: CrossEncoderScorer) -> None:
    docs = documents()
    query = "stock market"
    probs = scorer.score(query, [d.page_content for d in docs])
    cut = sorted(probs)[len(probs) // 2]
    kept = BGERerankCompressor(scorer=scorer, top_n=None, score_threshold=cut).compress_documents(
        docs, query
    )
    assert sorted(d.metadata["relevance_score"] for d in kept) == sorted(
        p for p in probs if p >= cut
    )
    assert 0 < len(kept) < len(docs)
    logits = BGERerankCompressor(scorer=scorer, top_n=None, normalize=False).compress_documents(
        docs, query
    )
    raw = scorer.score(query, [d.page_content for d in docs], normalize=False)
    assert [d.metadata["relevance_score"] for d in logits] == sorted(raw, reverse=True)


def test_metadata_template(scorer: CrossEncoderScorer) -> None:
    docs = documents(4)
    del docs[2].metadata["title"]
    compressor = BGERerankCompressor(scorer=scorer, top_n=None, template="Title: {title}\n{text}")
    assert compressor.document_text(docs[0]) == f"Title: Topic 0\n{docs[0].page_content}"
    assert compressor.document_text(docs[2]) == docs[2].page_content  # missing field skipped
    texts = [compressor.document_text(d) for d in docs]
    expected = dict(zip([d.id for d in docs], scorer.score("eiffel", texts)))
    out = compressor.compress_documents(docs, "eiffel")
    assert {d.id: d.metadata["relevance_score"] for d in out} == expected


def test_langchain_cross_encoder_reranker_uses_our_adapter(scorer: CrossEncoderScorer) -> None:
    docs = documents()
    query = "volcano"
    theirs = CrossEncoderReranker(model=BGECrossEncoder(scorer=scorer), top_n=3)
    ours = BGERerankCompressor(scorer=scorer, top_n=3)
    assert [d.id for d in theirs.compress_documents(docs, query)] == [
        d.id for d in ours.compress_documents(docs, query)
    ]
    pairs = [(query, d.page_content) for d in docs]
    assert BGECrossEncoder(scorer=scorer).score(pairs) == scorer.score_pairs(pairs)


# ---------------------------------------------------------------- end to end
def test_contextual_compression_retriever_sync_async_and_lcel(
    scorer: CrossEncoderScorer, retriever
) -> None:
    query = "where is the Eiffel tower"
    candidates = retriever.invoke(query)
    assert len(candidates) == 10
    expected = scorer.score(query, [d.page_content for d in candidates])
    order = sorted(range(10), key=lambda i: (-expected[i], i))[:3]
    want = [(candidates[i].id, expected[i]) for i in order]

    compression = ContextualCompressionRetriever(
        base_compressor=BGERerankCompressor(scorer=scorer, top_n=3), base_retriever=retriever
    )
    got = compression.invoke(query)
    assert [(d.id, d.metadata["relevance_score"]) for d in got] == want
    got_async = asyncio.run(compression.ainvoke(query))
    assert [(d.id, d.metadata["relevance_score"]) for d in got_async] == want

    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    seen: list[str] = []

    def remember(value):
        seen.append(value.to_string())
        return value

    answer = (
        prompt
        | RunnableLambda(remember)
        | FakeListChatModel(responses=["It is in Paris."])
        | StrOutputParser()
    )
    chain = RunnableParallel(
        docs=compression, question=RunnablePassthrough()
    ) | RunnablePassthrough.assign(
        answer=lambda x: answer.invoke(
            {
                "context": "\n".join(d.page_content for d in x["docs"]),
                "question": x["question"],
            }
        )
    )
    result = chain.invoke(query)
    assert result["answer"] == "It is in Paris."
    assert [(d.id, d.metadata["relevance_score"]) for d in result["docs"]] == want
    assert all(d.page_content in seen[0] for d in result["docs"])
    result_async = asyncio.run(chain.ainvoke(query))
    assert [(d.id, d.metadata["relevance_score"]) for d in result_async["docs"]] == want

    strict = ContextualCompressionRetriever(
        base_compressor=BGERerankCompressor(
            scorer=scorer, top_n=10, score_threshold=expected[order[1]]
        ),
        base_retriever=retriever,
    )
    assert [d.id for d in strict.invoke(query)] == [candidates[i].id for i in order[:2]]


def test_example_runs_offline(tiny_xlmr: Path, monkeypatch, capsys) -> None:
    script = ROOT / "examples" / "langchain_compression.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--model", str(tiny_xlmr), "--top-n", "2"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "relevance_score=" in out
    assert out.count("relevance_score=") == 2
    assert "same documents: True" in out


def test_pickle_and_deepcopy_leave_the_model_out(scorer: CrossEncoderScorer) -> None:
    import copy
    import pickle

    compressor = BGERerankCompressor(scorer=scorer, top_n=2, template=["title", "text"])
    restored = pickle.loads(pickle.dumps(compressor))
    assert restored.scorer is None and restored.model == scorer.model_name
    assert restored.template == ["title", "text"] and restored.top_n == 2
    clone = copy.deepcopy(compressor)
    assert clone.scorer is scorer  # a loaded model is shared, not duplicated
    assert clone.template == compressor.template and clone.template is not compressor.template
    docs = documents()
    assert restored.compress_documents(docs, "lava") == compressor.compress_documents(docs, "lava")
