"""BGEReranker: a LlamaIndex node postprocessor on the shared scorer."""

from __future__ import annotations

import asyncio
import math
import runpy
import sys
import time
import zlib
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor import SentenceTransformerRerank
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from pydantic import Field, ValidationError

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.llama_index import BGEReranker

ROOT = Path(__file__).resolve().parents[1]

TOPICS = [
    "giant pandas eat bamboo in the mountains of China",
    "the Eiffel tower is a wrought iron tower in Paris",
    "photosynthesis turns light into chemical energy in plants",
    "the stock market fell after the interest rate decision",
    "a cross-encoder reads the query and the passage together",
    "volcanoes erupt molten rock called lava",
]


def corpus(n: int = 30) -> list[Document]:
    """A few dozen small documents with title/section metadata."""
    docs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        docs.append(
            Document(
                text=f"Note {i}: {topic}. Detail number {i * 7 % 11}.",
                metadata={"title": f"Topic {i % len(TOPICS)}", "section": f"S{i}"},
                id_=f"doc-{i}",
            )
        )
    return docs


class HashingEmbedding(BaseEmbedding):
    """Deterministic bag-of-words embedding: shared words make vectors close."""

    dim: int = 64

    @classmethod
    def class_name(cls) -> str:
        return "HashingEmbedding"

    def _vector(self, text: str) -> list[float]:
        vec = [0.0] * self.dim
        for word in text.lower().replace(".", " ").replace(":", " ").split():
            vec[zlib.crc32(word.encode()) % self.dim] += 1.0
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)


class Recorder(BaseEventHandler):
    events: list = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, (ReRankStartEvent, ReRankEndEvent)):
            self.events.append(event)


@pytest.fixture()
def recorder():
    root = get_dispatcher()
    handler = Recorder(events=[])
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


@pytest.fixture()
def scorer(tiny_xlmr: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(tiny_xlmr, device="cpu")


def make_nodes(texts: list[str], scores: list[float] | None = None) -> list[NodeWithScore]:
    scores = scores or [1.0 - i / 100 for i in range(len(texts))]
    return [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}", metadata={"title": f"T{i}"}), score=s)
        for i, (t, s) in enumerate(zip(texts, scores))
    ]


TEXTS = [f"Note {i}: {TOPICS[i % len(TOPICS)]}" for i in range(8)]
# What BGEReranker scores by default: node.get_content(MetadataMode.EMBED), the title then the text
# (as LlamaIndex's SentenceTransformerRerank and FlagEmbeddingReranker do).
SCORED = [n.node.get_content(MetadataMode.EMBED) for n in make_nodes(TEXTS)]


# ---------------------------------------------------------------- construction / serialization
def test_default_construction_loads_nothing_and_serializes(monkeypatch) -> None:
    from bge_rerank_plugins import scorer as scorer_module

    monkeypatch.setattr(
        scorer_module, "load_cross_encoder", lambda *a, **k: pytest.fail("model loaded too early")
    )
    reranker = BGEReranker()
    assert reranker.model == "BAAI/bge-reranker-v2-m3"
    assert reranker.top_n == 3
    assert BGEReranker.class_name() == "BGEReranker"
    data = reranker.to_dict()
    assert data["class_name"] == "BGEReranker"
    assert data["model"] == "BAAI/bge-reranker-v2-m3"
    assert "scorer" not in data and "callback_manager" not in data
    again = BGEReranker.from_json(reranker.to_json())
    assert again.to_dict() == data


def test_round_trip_keeps_every_option() -> None:
    reranker = BGEReranker(
        model="some/model",
        top_n=5,
        use_fp16=False,
        batch_size=8,
        max_length="auto",
        normalize=False,
        score_threshold=-1.5,
        keep_retrieval_score=True,
        template=["title", "section", "text"],
        device="cpu",
    )
    again = BGEReranker.from_dict(reranker.to_dict())
    for name in ("model", "top_n", "use_fp16", "batch_size", "max_length", "normalize"):
        assert getattr(again, name) == getattr(reranker, name)
    assert again.score_threshold == -1.5
    assert again.template == ["title", "section", "text"]
    assert again.keep_retrieval_score is True
    assert again.device == "cpu"


def test_constructor_names_match_llama_index_rerankers() -> None:
    # SentenceTransformerRerank's own fields, plus FlagEmbeddingReranker's use_fp16.
    theirs = set(SentenceTransformerRerank.model_fields) - {"callback_manager"}
    assert theirs <= set(BGEReranker.model_fields)
    assert "use_fp16" in BGEReranker.model_fields
    for name, field in BGEReranker.model_fields.items():
        if name != "callback_manager":
            assert field.description, f"{name} has no description"


def test_bad_options_are_named() -> None:
    with pytest.raises(ValidationError, match="topn"):
        BGEReranker(topn=3)
    with pytest.raises(ValidationError, match="top_n"):
        BGEReranker(top_n=0)
    with pytest.raises(ValidationError, match="max_length"):
        BGEReranker(max_length=4)
    with pytest.raises(ValidationError, match="template"):
        BGEReranker(template="{}")
    with pytest.raises(ValidationError, match="metadata_mode"):
        BGEReranker(template="{title}", metadata_mode=MetadataMode.ALL)


def test_scorer_sharing_rejects_conflicting_options(scorer: CrossEncoderScorer) -> None:
    shared = BGEReranker(scorer=scorer)
    assert shared.get_scorer() is scorer
    assert shared.model == scorer.model_name
    assert "scorer" not in shared.to_dict()
    with pytest.raises(ValidationError, match="device"):
        BGEReranker(scorer=scorer, device="cpu")
    with pytest.raises(ValidationError, match="differs"):
        BGEReranker(scorer=scorer, model="other/model")


# ---------------------------------------------------------------- behaviour
def test_requires_query_and_handles_no_nodes(scorer: CrossEncoderScorer) -> None:
    reranker = BGEReranker(scorer=scorer)
    with pytest.raises(ValueError, match="query"):
        reranker.postprocess_nodes(make_nodes(TEXTS))
    assert reranker.postprocess_nodes([], query_str="anything") == []
    with pytest.raises(ValueError, match="query"):
        asyncio.run(reranker.apostprocess_nodes(make_nodes(TEXTS)))


def test_scores_sorted_top_n_floats_and_inputs_untouched(scorer: CrossEncoderScorer) -> None:
    nodes = make_nodes(TEXTS)
    before = [(n.node.node_id, n.score, dict(n.node.metadata)) for n in nodes]
    reranker = BGEReranker(scorer=scorer, top_n=3)
    out = reranker.postprocess_nodes(nodes, query_str="pandas eat bamboo")
    expected = scorer.score("pandas eat bamboo", SCORED)
    best = sorted(range(len(TEXTS)), key=lambda i: -expected[i])[:3]
    assert [n.node.node_id for n in out] == [f"n{i}" for i in best]
    assert [n.score for n in out] == [expected[i] for i in best]
    assert all(type(n.score) is float for n in out)
    assert [n.score for n in out] == sorted((n.score for n in out), reverse=True)
    # The caller's NodeWithScore objects and their nodes are left as they were.
    assert [(n.node.node_id, n.score, dict(n.node.metadata)) for n in nodes] == before
    assert all(o is not n for o in out for n in nodes)
    assert out[0].node is nodes[best[0]].node  # same node object, new wrapper


def test_keep_retrieval_score_copies_the_node(scorer: CrossEncoderScorer) -> None:
    nodes = make_nodes(TEXTS)
    out = BGEReranker(scorer=scorer, top_n=2, keep_retrieval_score=True).postprocess_nodes(
        nodes, query_str="volcano lava"
    )
    by_id = {n.node.node_id: n for n in nodes}
    for result in out:
        original = by_id[result.node.node_id]
        assert result.node.metadata["retrieval_score"] == original.score
        assert "retrieval_score" not in original.node.metadata
        assert result.node is not original.node
        assert result.node.text == original.node.text


def test_threshold_normalize_and_top_n_none(scorer: CrossEncoderScorer) -> None:
    query = "stock market"
    raw = scorer.score(query, SCORED, normalize=False)
    cut = sorted(raw)[len(raw) // 2]
    out = BGEReranker(
        scorer=scorer, top_n=None, normalize=False, score_threshold=cut
    ).postprocess_nodes(make_nodes(TEXTS), query_str=query)
    assert sorted(n.score for n in out) == sorted(s for s in raw if s >= cut)
    assert 0 < len(out) < len(TEXTS)
    assert any(s < 0 or s > 1 for s in raw)  # raw logits, not probabilities
    everything = BGEReranker(scorer=scorer, top_n=None).postprocess_nodes(
        make_nodes(TEXTS), query_str=query
    )
    assert len(everything) == len(TEXTS)
    assert all(0.0 <= n.score <= 1.0 for n in everything)


def test_text_to_score_metadata_mode_and_template(scorer: CrossEncoderScorer) -> None:
    nodes = make_nodes(TEXTS[:4])
    nodes[1].node.metadata["section"] = "Intro"
    query = "panda"
    by_mode = BGEReranker(scorer=scorer, top_n=None, metadata_mode=MetadataMode.ALL)
    expected = scorer.score(query, [n.node.get_content(MetadataMode.ALL) for n in nodes])
    got = {n.node.node_id: n.score for n in by_mode.postprocess_nodes(nodes, query_str=query)}
    assert [got[n.node.node_id] for n in nodes] == expected

    templated = BGEReranker(scorer=scorer, top_n=None, template="{title} / {section}\n{text}")
    assert templated.node_text(nodes[1]) == f"T1 / Intro\n{TEXTS[1]}"
    assert templated.node_text(nodes[0]) == f"T0\n{TEXTS[0]}"  # missing section skipped
    expected = scorer.score(query, [templated.node_text(n) for n in nodes])
    got = {n.node.node_id: n.score for n in templated.postprocess_nodes(nodes, query_str=query)}
    assert [got[n.node.node_id] for n in nodes] == expected
    embed = f"title: T1\nsection: Intro\n\n{TEXTS[1]}"  # the default, MetadataMode.EMBED
    assert BGEReranker(scorer=scorer).node_text(nodes[1]) == embed
    plain = BGEReranker(scorer=scorer, metadata_mode=MetadataMode.NONE)
    assert plain.node_text(nodes[1]) == TEXTS[1]


def test_lazy_scorer_is_built_once_and_shared_weights(tiny_xlmr: Path) -> None:
    reranker = BGEReranker(model=tiny_xlmr, device="cpu", top_n=2)
    assert reranker.model == str(tiny_xlmr)
    assert reranker._lazy_scorer is None
    out = reranker.postprocess_nodes(make_nodes(TEXTS), query_str="tower in Paris")
    first = reranker.get_scorer()
    assert first is reranker.get_scorer()
    other = CrossEncoderScorer(tiny_xlmr, device="cpu")
    assert other.model is first.model  # process-wide model cache
    assert [n.score for n in out] == sorted(other.score("tower in Paris", SCORED), reverse=True)[:2]


# ---------------------------------------------------------------- async
def test_async_runs_off_the_event_loop(scorer: CrossEncoderScorer) -> None:
    forward = scorer.runner

    def slow_runner(tensors):
        time.sleep(0.25)
        return forward(tensors)

    slow = CrossEncoderScorer.from_config(scorer.config, runner=slow_runner)
    reranker = BGEReranker(scorer=slow, top_n=3)
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    async def main() -> list[list[NodeWithScore]]:
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        results = await asyncio.gather(
            *(
                reranker.apostprocess_nodes(make_nodes(TEXTS), query_str=q)
                for q in ("panda", "lava", "Paris")
            )
        )
        stop.set()
        await task
        return results

    results = asyncio.run(main())
    # Three calls of at least 0.25 s each ran while the loop kept ticking every 10 ms.
    assert ticks >= 30
    reranker = BGEReranker(scorer=scorer, top_n=3)
    for query, result in zip(("panda", "lava", "Paris"), results):
        sync = reranker.postprocess_nodes(make_nodes(TEXTS), query_str=query)
        assert [(n.node.node_id, n.score) for n in result] == [
            (n.node.node_id, n.score) for n in sync
        ]


# ---------------------------------------------------------------- end to end
def test_query_engine_end_to_end(
    scorer: CrossEncoderScorer, recorder: Recorder, monkeypatch
) -> None:
    docs = corpus(30)
    index = VectorStoreIndex.from_documents(docs, embed_model=HashingEmbedding())
    query = "what do giant pandas eat?"
    retrieved = index.as_retriever(similarity_top_k=10).retrieve(query)
    assert len(retrieved) == 10
    expected = scorer.score(query, [n.node.get_content(MetadataMode.EMBED) for n in retrieved])
    order = sorted(range(10), key=lambda i: (-expected[i], i))[:3]
    want = [(retrieved[i].node.node_id, expected[i]) for i in order]

    debug = LlamaDebugHandler()
    monkeypatch.setattr(Settings, "callback_manager", CallbackManager([debug]))
    reranker = BGEReranker(scorer=scorer, top_n=3)
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=10, node_postprocessors=[reranker]
    )
    response = engine.query(query)
    got = [(n.node.node_id, n.score) for n in response.source_nodes]
    assert got == want
    assert all(isinstance(n.score, float) for n in response.source_nodes)

    starts = [e for e in recorder.events if isinstance(e, ReRankStartEvent)]
    ends = [e for e in recorder.events if isinstance(e, ReRankEndEvent)]
    assert len(starts) == 1 and len(ends) == 1
    assert starts[0].query.query_str == query
    assert starts[0].top_n == 3 and starts[0].model_name == scorer.model_name
    assert [n.node.node_id for n in starts[0].nodes] == [n.node.node_id for n in retrieved]
    assert [(n.node.node_id, n.score) for n in ends[0].nodes] == want

    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1
    start_payload, end_payload = pairs[0][0].payload, pairs[0][1].payload
    assert start_payload[EventPayload.QUERY_STR] == query
    assert start_payload[EventPayload.TOP_K] == 3
    assert start_payload[EventPayload.MODEL_NAME] == scorer.model_name
    assert len(start_payload[EventPayload.NODES]) == 10
    assert [(n.node.node_id, n.score) for n in end_payload[EventPayload.NODES]] == want

    recorder.events.clear()
    async_response = asyncio.run(engine.aquery(query))
    assert [(n.node.node_id, n.score) for n in async_response.source_nodes] == want
    assert sum(isinstance(e, ReRankStartEvent) for e in recorder.events) == 1
    assert sum(isinstance(e, ReRankEndEvent) for e in recorder.events) == 1


def test_query_bundle_and_query_str_agree(scorer: CrossEncoderScorer) -> None:
    reranker = BGEReranker(scorer=scorer, top_n=4)
    a = reranker.postprocess_nodes(make_nodes(TEXTS), query_bundle=QueryBundle("lava"))
    b = reranker.postprocess_nodes(make_nodes(TEXTS), query_str="lava")
    assert [(n.node.node_id, n.score) for n in a] == [(n.node.node_id, n.score) for n in b]


def test_example_runs_offline(tiny_xlmr: Path, monkeypatch, capsys) -> None:
    script = ROOT / "examples" / "llama_index_query_engine.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--model", str(tiny_xlmr), "--top-n", "2"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "Reranked sources" in out
    assert out.count("score=") == 2


def test_pickle_drops_the_loaded_model(tiny_xlmr: Path) -> None:
    import pickle

    reranker = BGEReranker(model=tiny_xlmr, device="cpu", top_n=2)
    first = reranker.postprocess_nodes(make_nodes(TEXTS), query_str="lava")
    restored = pickle.loads(pickle.dumps(reranker))
    assert restored._lazy_scorer is None and reranker._lazy_scorer is not None
    again = restored.postprocess_nodes(make_nodes(TEXTS), query_str="lava")
    assert [(n.node.node_id, n.score) for n in again] == [(n.node.node_id, n.score) for n in first]
