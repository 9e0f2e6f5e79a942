"""Fusion, deadlines and calibrated scores in the adapters (issue 23, items 1 and 4).

Each reranking adapter -- LlamaIndex's ``BGEReranker``, LangChain's ``BGERerankCompressor`` and
``BGERerankRetriever`` -- gives the order and scores of :func:`bge_rerank_plugins.fusion.fuse`
on the same inputs, says which score is which in the results' metadata, never touches the
caller's nodes or documents, and falls back to the first-stage order at its ``timeout``. The
server's ``score_timeout_s`` answers 503 and shows in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pydantic")

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins import ranking as ranking_module
from bge_rerank_plugins.calibration import Calibration, fit_platt, sigmoid
from bge_rerank_plugins.fusion import FusionConfig, fuse, fused_order

QUERY = "what do giant pandas eat?"
TEXTS = [
    "Pandas is a Python library for data frames.",
    "The giant panda's diet is almost entirely bamboo.",
    "Beijing is the capital of China.",
    "Red pandas also eat bamboo, plus fruit and insects.",
    "The Eiffel tower is in Paris.",
    "Bamboo grows fast in the mountains of Sichuan.",
]
FIRST = [3.0, 9.5, 0.5, 7.0, 1.0, 4.25]  # a first stage's scores (BM25-like), not sorted
BLEND = FusionConfig(method="blend", weight=0.5)
RRF = FusionConfig(method="rrf", weight=0.7, rrf_k=2)
KEYS = {"reranker_score", "first_stage_score", "fused_score", "reranked"}
# Time the deadline may take beyond the timeout: tokenizing the passages and one batch, on a
# shared CPU. Scoring them all takes several times longer.
OVERHEAD_S = 2.0
MANY = [f"passage {i}: bamboo, pandas and the mountains of Sichuan in spring" for i in range(400)]


@pytest.fixture(scope="module")
def scorer(tiny_bert: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(tiny_bert, batch_size=4)


def expected(scorer: CrossEncoderScorer, first: list[float] | None, config: FusionConfig):
    raw = scorer.score(QUERY, TEXTS, normalize=False)
    fused = fuse(raw, first, config)
    return raw, fused, fused_order(raw, first, config)


# ---------------------------------------------------------------- LlamaIndex
li = pytest.importorskip("llama_index.core.schema")


def nodes(scores: list[float | None] = FIRST, texts: list[str] = TEXTS) -> list[Any]:
    # The bm25 entry is kept out of the scored text, so the texts scored are TEXTS.
    return [
        li.NodeWithScore(
            node=li.TextNode(
                text=t, id_=f"n{i}", metadata={"bm25": s}, excluded_embed_metadata_keys=["bm25"]
            ),
            score=s,
        )
        for i, (t, s) in enumerate(zip(texts, scores))
    ]


def snapshot(items: list[Any]) -> list[Any]:
    return [copy.deepcopy(item.model_dump()) for item in items]


@pytest.mark.parametrize("config", [BLEND, RRF], ids=["blend", "rrf"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_llama_index_fusion_is_fuse(scorer: CrossEncoderScorer, config, mode) -> None:
    from bge_rerank_plugins.llama_index import BGEReranker

    reranker = BGEReranker(scorer=scorer, fusion=config, top_n=None, metadata_mode="none")
    given = nodes()
    before = snapshot(given)
    if mode == "sync":
        out = reranker.postprocess_nodes(given, query_str=QUERY)
    else:
        out = asyncio.run(reranker.apostprocess_nodes(given, query_str=QUERY))
    raw, fused, order = expected(scorer, FIRST, config)
    assert [n.node.node_id for n in out] == [f"n{i}" for i in order]
    assert [n.score for n in out] == pytest.approx([fused[i] for i in order])
    for result, i in zip(out, order):
        meta = result.node.metadata
        assert KEYS <= set(meta) and meta["reranked"] is True
        assert meta["reranker_score"] == pytest.approx(sigmoid(raw[i]), rel=1e-6)
        assert meta["first_stage_score"] == FIRST[i] and meta["fused_score"] == result.score
        # The score keys stay out of the text an LLM or embedding model sees.
        assert "reranker_score" not in result.node.get_content(metadata_mode="llm")
        assert result.node is not given[i].node
    assert snapshot(given) == before  # the caller's nodes are as they were


def test_llama_index_first_stage_sources(scorer: CrossEncoderScorer, caplog) -> None:
    from bge_rerank_plugins.llama_index import BGEReranker

    by_metadata = BGEReranker(scorer=scorer, fusion=BLEND, first_stage="metadata:bm25", top_n=3)
    by_score = BGEReranker(scorer=scorer, fusion=BLEND, top_n=3)
    ids = [n.node.node_id for n in by_score.postprocess_nodes(nodes(), query_str=QUERY)]
    assert [n.node.node_id for n in by_metadata.postprocess_nodes(nodes(), query_str=QUERY)] == ids
    _, _, order = expected(scorer, FIRST, BLEND)
    assert ids == [f"n{i}" for i in order[:3]]
    by_rank = BGEReranker(scorer=scorer, fusion=BLEND, first_stage="rank", top_n=None)
    order = expected(scorer, None, BLEND)[2]
    out = by_rank.postprocess_nodes(nodes(), query_str=QUERY)
    assert [n.node.node_id for n in out] == [f"n{i}" for i in order]
    assert out[0].node.metadata["first_stage_score"] is None
    # A node without a score: the incoming order for that call, with one warning.
    missing = [*FIRST[:2], None, *FIRST[3:]]
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins.adapter_ranking"):
        for _ in range(2):
            out = by_score.postprocess_nodes(nodes(missing), query_str=QUERY)
    assert [n.node.node_id for n in out] == [f"n{i}" for i in order[:3]]
    warnings = [r for r in caplog.records if "no finite first-stage score" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 6 candidates" in warnings[0].getMessage()


def test_llama_index_keeps_its_default_output_without_fusion(scorer: CrossEncoderScorer) -> None:
    from bge_rerank_plugins.llama_index import BGEReranker

    given = nodes()
    out = BGEReranker(scorer=scorer, top_n=2).postprocess_nodes(given, query_str=QUERY)
    assert not KEYS & set(out[0].node.metadata)
    assert out[0].node is given[int(out[0].node.node_id[1:])].node  # no copy without the keys


def test_llama_index_settings_round_trip_with_fusion(scorer: CrossEncoderScorer) -> None:
    from pydantic import ValidationError

    from bge_rerank_plugins.llama_index import BGEReranker

    reranker = BGEReranker(fusion={"method": "rrf", "weight": 0.7}, timeout=0.5)
    assert reranker.fusion == FusionConfig(method="rrf", weight=0.7)
    again = BGEReranker.from_dict(reranker.to_dict())
    assert (again.fusion, again.timeout, again.first_stage) == (reranker.fusion, 0.5, "score")
    assert BGEReranker.from_json(reranker.to_json()).fusion == reranker.fusion
    for bad, match in [
        ({"fusion": {"method": "max"}}, "method must be one of"),
        ({"fusion": {"wieght": 0.5}}, "unknown fusion settings"),
        ({"fusion": 0.5}, "fusion must be None, 'auto'"),
        ({"first_stage": "bm25"}, "first_stage must be one of"),
        ({"first_stage": "metadata:"}, "first_stage must be one of"),
        ({"timeout": 0}, "timeout must be a finite number of seconds > 0"),
        ({"timeout": "1"}, "timeout must be a number of seconds or None"),
        ({"timeout": True}, "timeout must be a number of seconds or None"),
    ]:
        with pytest.raises(ValidationError, match=match):
            BGEReranker(**bad)


class OldApiScorer:
    """A scorer= object whose rank() predates first_stage_scores/fusion/timeout."""

    model_name = "old"

    def score(self, query, passages, *, normalize=None):
        return [float(len(p)) for p in passages]

    def rank(self, query, passages, top_k=None):
        raise AssertionError("not called")


def test_fusion_needs_the_current_rank_api() -> None:
    from bge_rerank_plugins.llama_index import BGEReranker

    old = BGEReranker(scorer=OldApiScorer(), top_n=2)
    assert len(old.postprocess_nodes(nodes(), query_str=QUERY)) == 2  # score() as before
    with pytest.raises(TypeError, match="fusion= and timeout= need the scorer's rank"):
        BGEReranker(scorer=OldApiScorer(), fusion=BLEND).postprocess_nodes(nodes(), query_str=QUERY)


# ---------------------------------------------------------------- LangChain
lc_documents = pytest.importorskip("langchain_core.documents")


def documents(scores: list[float | None] = FIRST) -> list[Any]:
    return [
        lc_documents.Document(page_content=t, id=f"d{i}", metadata={"score": s, "src": "x"})
        for i, (t, s) in enumerate(zip(TEXTS, scores))
    ]


def _fixed_retriever(docs: list[Any]) -> Any:
    from langchain_core.retrievers import BaseRetriever

    class Fixed(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            return docs

    return Fixed()


def run_langchain(kind: str, mode: str, docs: list[Any], **options: Any) -> list[Any]:
    from bge_rerank_plugins.langchain import BGERerankCompressor, BGERerankRetriever

    if kind == "compressor":
        top_n = options.pop("n", None)
        compressor = BGERerankCompressor(top_n=top_n, **options)
        if mode == "sync":
            return list(compressor.compress_documents(docs, QUERY))
        return list(asyncio.run(compressor.acompress_documents(docs, QUERY)))
    retriever = BGERerankRetriever(
        base_retriever=_fixed_retriever(docs), k=options.pop("n", None), **options
    )
    if mode == "sync":
        return retriever.invoke(QUERY)
    return asyncio.run(retriever.ainvoke(QUERY))


@pytest.mark.parametrize("kind", ["compressor", "retriever"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_langchain_fusion_is_fuse(scorer: CrossEncoderScorer, kind: str, mode: str) -> None:
    given = documents()
    before = snapshot(given)
    out = run_langchain(kind, mode, given, scorer=scorer, fusion=RRF)
    raw, fused, order = expected(scorer, FIRST, RRF)
    assert [d.id for d in out] == [f"d{i}" for i in order]
    for doc, i in zip(out, order):
        meta = doc.metadata
        assert meta["relevance_score"] == pytest.approx(fused[i]) == meta["fused_score"]
        assert meta["reranker_score"] == pytest.approx(sigmoid(raw[i]), rel=1e-6)
        assert (meta["first_stage_score"], meta["reranked"], meta["src"]) == (FIRST[i], True, "x")
    assert snapshot(given) == before
    # first_stage="rank": the incoming order is the first stage's.
    by_rank = run_langchain(
        kind, mode, documents(), scorer=scorer, fusion=BLEND, first_stage="rank"
    )
    assert [d.id for d in by_rank] == [f"d{i}" for i in expected(scorer, None, BLEND)[2]]


def test_langchain_first_stage_is_metadata_or_rank() -> None:
    from pydantic import ValidationError

    from bge_rerank_plugins.langchain import BGERerankCompressor, BGERerankRetriever

    assert BGERerankCompressor().first_stage == "metadata:score"
    assert BGERerankCompressor(first_stage="metadata:bm25").first_stage == "metadata:bm25"
    with pytest.raises(ValidationError, match="'metadata:<key>', 'rank'"):
        BGERerankCompressor(first_stage="score")  # a Document has no score of its own
    retriever = BGERerankRetriever(base_retriever=_fixed_retriever([]), fusion=BLEND)
    assert retriever.model_dump()["fusion"] == BLEND.to_dict()


# ---------------------------------------------------------------- deadlines
def _check_fallback(out: list[Any], ids: list[str], meta: list[dict], started: float) -> None:
    elapsed = time.perf_counter() - started
    assert elapsed < 2 * 1e-3 + OVERHEAD_S, f"the deadline took {elapsed:.2f} s"
    assert ids == ["m399", "m398", "m397"]  # the first stage's best, not reranked
    assert all(m["reranked"] is False and m["reranker_score"] is None for m in meta)


FIRST_MANY = [float(i) for i in range(len(MANY))]  # the last passage is the first stage's best


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_llama_index_timeout_returns_the_first_stage_order(scorer, mode) -> None:
    from bge_rerank_plugins.llama_index import BGEReranker

    reranker = BGEReranker(scorer=scorer, timeout=1e-3, top_n=3, score_threshold=0.999)
    given = [
        li.NodeWithScore(node=li.TextNode(text=t, id_=f"m{i}"), score=s)
        for i, (t, s) in enumerate(zip(MANY, FIRST_MANY))
    ]
    fallbacks = ranking_module.deadline_fallbacks()
    started = time.perf_counter()
    if mode == "sync":
        out = reranker.postprocess_nodes(given, query_str=QUERY)
    else:
        out = asyncio.run(reranker.apostprocess_nodes(given, query_str=QUERY))
    # score_threshold is not applied to a fallback: three nodes come back.
    ids = [n.node.node_id for n in out]
    _check_fallback(out, ids, [n.node.metadata for n in out], started)
    assert [n.score for n in out] == [399.0, 398.0, 397.0]
    assert ranking_module.deadline_fallbacks() == fallbacks + 1


@pytest.mark.parametrize("kind", ["compressor", "retriever"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_langchain_timeout_returns_the_first_stage_order(scorer, kind, mode) -> None:
    docs = [
        lc_documents.Document(page_content=t, id=f"m{i}", metadata={"score": s})
        for i, (t, s) in enumerate(zip(MANY, FIRST_MANY))
    ]
    started = time.perf_counter()
    out = run_langchain(kind, mode, docs, scorer=scorer, timeout=1e-3, n=3, score_threshold=0.999)
    _check_fallback(out, [d.id for d in out], [d.metadata for d in out], started)
    assert [d.metadata["relevance_score"] for d in out] == [399.0, 398.0, 397.0]


def test_a_timeout_that_is_kept_reranks(scorer: CrossEncoderScorer) -> None:
    from bge_rerank_plugins.llama_index import BGEReranker

    out = BGEReranker(scorer=scorer, timeout=60.0, top_n=None).postprocess_nodes(
        nodes(), query_str=QUERY
    )
    assert all(n.node.metadata["reranked"] is True for n in out)
    assert [n.score for n in out] == sorted(scorer.score(QUERY, TEXTS), reverse=True)


class AsyncRanker:
    """A scorer with the current coroutine ``arank`` (as RemoteScorer has)."""

    model_name = "remote"
    normalize = True
    calibration = None

    def __init__(self, inner: CrossEncoderScorer) -> None:
        self.inner = inner
        self.calls: list[dict[str, Any]] = []

    def score(self, query, passages, *, normalize=None):
        raise AssertionError("the adapter awaits arank")

    def rank(self, query, passages, top_k=None, **options):
        raise AssertionError("the adapter awaits arank")

    async def arank(self, query, passages, top_k=None, **options):
        self.calls.append(options)
        return self.inner.rank(query, passages, top_k, **options)


def test_async_paths_await_the_scorers_arank_with_fusion_and_timeout(scorer) -> None:
    from bge_rerank_plugins.langchain import BGERerankCompressor

    remote = AsyncRanker(scorer)
    compressor = BGERerankCompressor(scorer=remote, fusion=BLEND, timeout=30.0, top_n=2)
    out = asyncio.run(compressor.acompress_documents(documents(), QUERY))
    assert remote.calls == [
        {"normalize": True, "first_stage_scores": FIRST, "fusion": BLEND, "timeout": 30.0}
    ]
    assert [d.id for d in out] == [f"d{i}" for i in expected(scorer, FIRST, BLEND)[2][:2]]


# ---------------------------------------------------------------- calibrated scores, "auto"
TOY_RAW = [-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0]
TOY_LABELS = [0, 0, 0, 1, 0, 1, 0, 1, 1, 1]


@pytest.fixture
def calibrated_model(tiny_bert: Path, tmp_path: Path) -> tuple[Path, Calibration]:
    folder = Path(shutil.copytree(tiny_bert, tmp_path / "calibrated"))
    calibration = Calibration(platt=fit_platt(TOY_RAW, TOY_LABELS), fusion=RRF)
    calibration.save(folder)
    return folder, calibration


def test_calibrated_scores_and_auto_fusion(calibrated_model) -> None:
    from bge_rerank_plugins.langchain import BGERerankCompressor
    from bge_rerank_plugins.llama_index import BGEReranker

    folder, calibration = calibrated_model
    scorer = CrossEncoderScorer(folder, normalize="calibrated", batch_size=4)
    raw = scorer.score(QUERY, TEXTS, normalize=False)
    probabilities = calibration.probabilities(raw)
    # normalize="calibrated": the scores are probabilities; score_threshold is one too.
    low = sorted(probabilities)
    threshold = (low[2] + low[3]) / 2  # between two scores: batch padding moves them by 1e-8
    reranker = BGEReranker(
        model=folder, normalize="calibrated", top_n=None, score_threshold=threshold
    )
    out = reranker.postprocess_nodes(nodes(), query_str=QUERY)
    want = sorted((p for p in probabilities if p >= threshold), reverse=True)
    assert [n.score for n in out] == pytest.approx(want, rel=1e-6)
    # fusion="auto": the fusion fitted into the same file.
    auto = BGERerankCompressor(scorer=scorer, fusion="auto", top_n=None)
    docs = auto.compress_documents(documents(), QUERY)
    assert [d.id for d in docs] == [f"d{i}" for i in fused_order(raw, FIRST, RRF)]
    assert docs[0].metadata["reranker_score"] == pytest.approx(max(probabilities), rel=1e-6)


def test_calibrated_and_auto_without_a_calibration_file(tiny_bert: Path, scorer) -> None:
    from pydantic import ValidationError

    from bge_rerank_plugins.calibration import CalibrationMissingError
    from bge_rerank_plugins.langchain import BGERerankRetriever
    from bge_rerank_plugins.llama_index import BGEReranker

    with pytest.raises(ValidationError, match="normalize='calibrated' needs a calibration"):
        BGEReranker(model=tiny_bert, normalize="calibrated")
    with pytest.raises(ValidationError, match="fusion='auto' needs a fitted fusion"):
        BGEReranker(scorer=scorer, fusion="auto")
    with pytest.raises(ValidationError, match="bge-rerank fit"):
        BGERerankRetriever(base_retriever=_fixed_retriever([]), model="http://h:1", fusion="auto")
    with pytest.raises(ValidationError, match=r"score_threshold=2\.0 is above 1"):
        BGEReranker(normalize="calibrated", score_threshold=2.0)
    # A Hub id is checked when its model loads; a scorer that lost its file at call time.
    assert BGEReranker(model="org/not-downloaded", fusion="auto").fusion == "auto"
    late = BGEReranker(scorer=scorer, fusion=BLEND)
    late.__dict__["fusion"] = "auto"  # as if the file went away after construction
    with pytest.raises(CalibrationMissingError, match="fusion='auto'"):
        late.postprocess_nodes(nodes(), query_str=QUERY)


# ---------------------------------------------------------------- the server's deadline
def test_server_deadline_answers_503_and_counts_it(tiny_bert: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import threading

    from fastapi.testclient import TestClient

    from bge_rerank_plugins.server import ServerConfig, create_app

    release = threading.Event()

    class SlowScorer:
        """Holds its first batch until released: the request behind it passes its deadline."""

        device = "cpu"
        model_max_length = 512

        def score_pairs(self, pairs, normalize=False):
            release.wait(10)
            return [float(len(p)) for _, p in pairs]

    config = ServerConfig(model=str(tiny_bert), score_timeout_s=0.2)
    with TestClient(create_app(config, scorer_factory=SlowScorer)) as client:
        try:
            for _ in range(100):
                if client.get("/health").status_code == 200:
                    break
                time.sleep(0.05)
            started = time.perf_counter()
            late = client.post("/rerank", json={"query": "q", "texts": ["a", "bb"]})
            assert time.perf_counter() - started < 5
        finally:
            release.set()  # the held batch finishes; the next request is scored in time
        assert late.status_code == 503 and late.headers["Retry-After"] == "1"
        assert late.json()["error_type"] == "deadline_exceeded"
        assert "score_timeout_s=0.2" in late.json()["message"]
        ok = client.post("/rerank", json={"query": "q", "texts": ["a", "bb"]})
        assert ok.status_code == 200 and [x["index"] for x in ok.json()] == [1, 0]
        metrics = client.get("/metrics").text
    assert "bge_rerank_deadline_fallbacks_total 1.0" in metrics
    with pytest.raises(ValueError, match="score_timeout_s must be a number of seconds > 0"):
        ServerConfig(model=str(tiny_bert), score_timeout_s=0)
