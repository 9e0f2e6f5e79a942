"""Switching to BGEReranker from LlamaIndex's own rerankers keeps the ranking and the scores.

``SentenceTransformerRerank`` (in llama-index-core) and ``FlagEmbeddingReranker``
(llama-index-postprocessor-flag-embedding-reranker, on FlagEmbedding's ``FlagReranker``) both
score ``node.get_content(metadata_mode=MetadataMode.EMBED)``; so does BGEReranker by default.
Each comparison runs the other class and BGEReranker on the same tiny local model, over nodes
whose metadata (a title, and a key excluded from embedding) changes the scored text.

Also here: ``from_dict`` refusing another class's settings, and ``scorer=`` / ``model="http://..."``
for remote scorers (a small fake stands in for ``bge_rerank_plugins.remote.RemoteScorer``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
import types
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.postprocessor import SentenceTransformerRerank
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from pydantic import ValidationError

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.llama_index import BGEReranker

QUERIES = [
    "what do giant pandas eat?",
    "where is the Eiffel tower?",
    "how do plants make energy?",
    "why did the stock market fall?",
]
RECORDS = [
    ("Giant panda", "Giant pandas eat bamboo in the mountains of China."),
    ("Eiffel tower", "The tower is made of wrought iron and stands in Paris."),
    ("Photosynthesis", "Plants turn light into chemical energy."),
    ("Markets", "Shares fell after the interest rate decision."),
    ("Red panda", "Red pandas eat bamboo leaves, fruit and insects."),
    ("Volcano", "Volcanoes erupt molten rock called lava."),
]
TOL = 1e-5


def make_nodes(lower: bool = False) -> list[NodeWithScore]:
    """Fresh nodes each time: the LlamaIndex rerankers overwrite the scores they are given."""
    records = [(t.lower(), x.lower()) for t, x in RECORDS] if lower else RECORDS
    return [
        NodeWithScore(
            node=TextNode(
                text=text,
                id_=f"n{i}",
                metadata={"title": title, "url": f"https://example.org/{i}"},
                excluded_embed_metadata_keys=["url"],  # EMBED leaves it out; ALL would not
            ),
            score=1.0 - i / 10,
        )
        for i, (title, text) in enumerate(records)
    ]


def ranking(out: list[NodeWithScore]) -> list[tuple[str, float]]:
    return [(n.node.node_id, float(n.score)) for n in out]


def assert_same(theirs: list[NodeWithScore], ours: list[NodeWithScore]) -> None:
    assert [i for i, _ in ranking(ours)] == [i for i, _ in ranking(theirs)]
    for (_, a), (_, b) in zip(ranking(theirs), ranking(ours)):
        assert b == pytest.approx(a, abs=TOL)


@pytest.fixture(scope="module")
def scorer(tiny_xlmr: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(tiny_xlmr, device="cpu")


# ------------------------------------------------------------------ the scored text
def test_the_metadata_changes_the_scores(scorer: CrossEncoderScorer) -> None:
    """Guard: the comparison below would be empty if the title did not change the scores."""
    nodes = make_nodes()
    embed = [n.node.get_content(MetadataMode.EMBED) for n in nodes]
    assert embed[0] == f"title: {RECORDS[0][0]}\n\n{RECORDS[0][1]}"
    assert all("example.org" not in t for t in embed)
    plain = scorer.score(QUERIES[0], [t for _, t in RECORDS])
    titled = scorer.score(QUERIES[0], embed)
    assert max(abs(a - b) for a, b in zip(plain, titled)) > 1e-3


def test_default_scores_node_content_with_embed_metadata(scorer: CrossEncoderScorer) -> None:
    reranker = BGEReranker(scorer=scorer, top_n=None)
    assert reranker.metadata_mode is MetadataMode.EMBED
    nodes = make_nodes()
    assert [reranker.node_text(n) for n in nodes] == [
        n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes
    ]
    plain = BGEReranker(scorer=scorer, metadata_mode=MetadataMode.NONE)
    assert plain.node_text(nodes[0]) == RECORDS[0][1]


def test_a_template_replaces_the_metadata_mode_and_round_trips(scorer: CrossEncoderScorer) -> None:
    templated = BGEReranker(scorer=scorer, template=["title", "text"])
    assert templated.node_text(make_nodes()[0]) == "\n".join(RECORDS[0])
    again = BGEReranker.from_dict(templated.to_dict())
    assert again.template == ["title", "text"]
    with pytest.raises(ValidationError, match="metadata_mode=EMBED and template"):
        BGEReranker(template="{title}", metadata_mode=MetadataMode.EMBED)


# ------------------------------------------------------------------ SentenceTransformerRerank
def test_same_ranking_and_scores_as_sentence_transformer_rerank(
    tiny_xlmr: Path, scorer: CrossEncoderScorer
) -> None:
    pytest.importorskip("sentence_transformers")
    theirs = SentenceTransformerRerank(model=str(tiny_xlmr), top_n=len(RECORDS), device="cpu")
    # Switching: the same arguments, another class name (the defaults that differ are in the
    # docs' migration table; top_n and device are given here, as a caller would).
    ours = BGEReranker(model=str(tiny_xlmr), top_n=len(RECORDS), device="cpu")
    top3 = BGEReranker(model=str(tiny_xlmr), top_n=3, device="cpu")
    for query in QUERIES:
        expected = theirs.postprocess_nodes(make_nodes(), query_str=query)
        assert_same(expected, ours.postprocess_nodes(make_nodes(), query_str=query))
        assert_same(expected[:3], top3.postprocess_nodes(make_nodes(), query_str=query))
        got = asyncio.run(ours.apostprocess_nodes(make_nodes(), query_str=query))
        assert_same(expected, got)


def test_a_model_that_declares_identity_activation_needs_normalize_false(
    tiny_xlmr: Path, tmp_path: Path
) -> None:
    """sentence-transformers returns raw logits for a model whose config names Identity (as
    cross-encoder/ms-marco-MiniLM-L-6-v2's does); normalize=False matches it there."""
    pytest.importorskip("sentence_transformers")
    model = tmp_path / "identity"
    shutil.copytree(tiny_xlmr, model)
    config = json.loads((model / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (model / "config.json").write_text(json.dumps(config))
    theirs = SentenceTransformerRerank(model=str(model), top_n=len(RECORDS), device="cpu")
    expected = theirs.postprocess_nodes(make_nodes(), query_str=QUERIES[0])
    assert any(not 0 <= n.score <= 1 for n in expected)  # logits, not probabilities
    ours = BGEReranker(model=str(model), top_n=len(RECORDS), device="cpu", normalize=False)
    assert_same(expected, ours.postprocess_nodes(make_nodes(), query_str=QUERIES[0]))


# ------------------------------------------------------------------ FlagEmbeddingReranker
# The tiny tokenizer knows few capital letters, and FlagEmbedding 1.4.2 on transformers 5 decodes
# each passage's ids back to text and tokenizes the pair again, which moves an "<unk>" next to a
# space (a real bge tokenizer has no unknown letters). So these texts are lower case.
FLAG_QUERIES = [q.lower() for q in QUERIES]


def flag_nodes(tiny_xlmr: Path) -> list[NodeWithScore]:
    from transformers import AutoTokenizer

    nodes = make_nodes(lower=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_xlmr)
    for text in [*FLAG_QUERIES, *(n.node.get_content(MetadataMode.EMBED) for n in nodes)]:
        assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text
    return nodes


def test_same_ranking_and_logits_as_flag_embedding_reranker(tiny_xlmr: Path) -> None:
    flag = pytest.importorskip("llama_index.postprocessor.flag_embedding_reranker")
    pytest.importorskip("FlagEmbedding")
    theirs = flag.FlagEmbeddingReranker(model=str(tiny_xlmr), top_n=len(RECORDS), use_fp16=False)
    ours = BGEReranker(
        model=str(tiny_xlmr), top_n=len(RECORDS), use_fp16=False, normalize=False, device="cpu"
    )
    for query in FLAG_QUERIES:
        expected = theirs.postprocess_nodes(flag_nodes(tiny_xlmr), query_str=query)
        assert any(not 0 <= n.score <= 1 for n in expected)  # raw logits
        assert_same(expected, ours.postprocess_nodes(flag_nodes(tiny_xlmr), query_str=query))


def test_flag_reranker_contract_raw_logits_of_embed_text(tiny_xlmr: Path) -> None:
    """FlagEmbeddingReranker's contract, without the integration package: FlagReranker's
    compute_score (raw logits by default) over (query, EMBED text) pairs."""
    pytest.importorskip("FlagEmbedding")
    from FlagEmbedding import FlagReranker

    model = FlagReranker(str(tiny_xlmr), use_fp16=False, devices="cpu")
    ours = BGEReranker(model=str(tiny_xlmr), top_n=None, normalize=False, device="cpu")
    for query in FLAG_QUERIES:
        nodes = flag_nodes(tiny_xlmr)
        pairs = [(query, n.node.get_content(metadata_mode=MetadataMode.EMBED)) for n in nodes]
        logits = model.compute_score(pairs)
        got = {i: s for i, s in ranking(ours.postprocess_nodes(nodes, query_str=query))}
        assert [got[f"n{i}"] for i in range(len(nodes))] == pytest.approx(logits, abs=TOL)


# ------------------------------------------------------------------ from_dict / from_json
@pytest.mark.parametrize("other", ["SentenceTransformerRerank", "FlagEmbeddingReranker"])
def test_from_dict_refuses_another_class(other: str) -> None:
    data = {"class_name": other, "model": "BAAI/bge-reranker-large", "top_n": 2}
    pattern = rf"class_name='{other}', expected 'BGEReranker'"
    with pytest.raises(ValueError, match=pattern):
        BGEReranker.from_dict(data)
    with pytest.raises(ValueError, match=pattern):
        BGEReranker.from_json(json.dumps(data))
    assert data["class_name"] == other  # the caller's dict is left as it was
    with pytest.raises(TypeError, match="needs a dict"):
        BGEReranker.from_dict("top_n=2")  # type: ignore[arg-type]


def test_from_dict_accepts_its_own_and_plain_dicts() -> None:
    data = BGEReranker(top_n=4, metadata_mode=MetadataMode.NONE).to_dict()
    assert BGEReranker.from_json(json.dumps(data)).to_dict() == data
    assert BGEReranker.from_dict({"top_n": 4}).top_n == 4  # no class_name: taken as ours


# ------------------------------------------------------------------ remote scorers
class FakeRemote:
    """The CrossEncoderScorer API over a fixed table, with async methods as RemoteScorer has."""

    model_name = "remote-model"
    normalize = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []

    def _scores(self, query: str, passages: list[str], normalize: bool | None) -> list[float]:
        raw = [float(len(set(query.split()) & set(p.split()))) - 1.0 for p in passages]
        return [1 / (1 + 2.718281828**-s) for s in raw] if normalize in (None, True) else raw

    def score(self, query, passages, *, normalize=None):
        self.calls.append(("score", threading.get_ident()))
        return self._scores(query, list(passages), normalize)

    def rank(self, query, passages, top_k=None, *, normalize=None):
        raise AssertionError("the adapter ranks the scores itself")

    async def ascore(self, query, passages, *, normalize=None):
        self.calls.append(("ascore", threading.get_ident()))
        await asyncio.sleep(0)
        return self._scores(query, list(passages), normalize)

    async def arank(self, query, passages, top_k=None, *, normalize=None):
        raise AssertionError("the adapter ranks the scores itself")


def test_scorer_accepts_an_object_with_the_scorer_api() -> None:
    remote = FakeRemote()
    reranker = BGEReranker(scorer=remote, top_n=2)
    assert reranker.get_scorer() is remote and reranker.model == "remote-model"
    out = reranker.postprocess_nodes(make_nodes(), query_str="giant pandas eat bamboo")
    assert [n.node.node_id for n in out] == ["n0", "n4"]
    assert remote.calls[0][0] == "score"
    data = reranker.to_dict()
    assert "scorer" not in data and data["model"] == "remote-model"
    assert "scorer" not in json.loads(reranker.to_json())
    BGEReranker.model_json_schema()  # the fields stay serialisable (no scorer object in them)
    with pytest.raises(ValidationError, match="scorer"):
        BGEReranker(scorer=object())
    with pytest.raises(ValidationError, match="device"):
        BGEReranker(scorer=remote, device="cpu")  # it loads nothing: no loading options


def test_async_path_awaits_the_scorers_own_coroutine_on_the_loop() -> None:
    remote = FakeRemote()
    reranker = BGEReranker(scorer=remote, top_n=2)
    query = "giant pandas eat bamboo"

    async def main() -> tuple[list[NodeWithScore], int]:
        return await reranker.apostprocess_nodes(make_nodes(), query_str=query), (
            threading.get_ident()
        )

    out, loop_thread = asyncio.run(main())
    assert remote.calls == [("ascore", loop_thread)]  # awaited directly: no worker thread
    sync = BGEReranker(scorer=FakeRemote(), top_n=2).postprocess_nodes(
        make_nodes(), query_str=query
    )
    assert ranking(out) == ranking(sync)


def test_model_url_builds_a_remote_scorer(monkeypatch) -> None:
    made: list[str] = []

    class RemoteScorer(FakeRemote):
        def __init__(self, url: str) -> None:
            super().__init__()
            made.append(url)

    fake = types.ModuleType("bge_rerank_plugins.remote")
    fake.RemoteScorer = RemoteScorer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bge_rerank_plugins.remote", fake)
    reranker = BGEReranker(model="http://rerank.internal:8000", top_n=1)
    assert made == []  # built on first use, like a local model
    out = reranker.postprocess_nodes(make_nodes(), query_str="giant pandas eat bamboo")
    assert made == ["http://rerank.internal:8000"]
    assert isinstance(reranker.get_scorer(), RemoteScorer) and len(out) == 1
    assert BGEReranker.from_dict(reranker.to_dict()).model == "http://rerank.internal:8000"


def test_model_url_without_the_remote_module_says_why(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bge_rerank_plugins.remote", None)  # import fails
    reranker = BGEReranker(model="https://rerank.internal", top_n=1)
    with pytest.raises(ImportError, match=r"https://rerank\.internal.*remote"):
        reranker.postprocess_nodes(make_nodes(), query_str="pandas")


def test_a_real_remote_scorer_sync_and_async() -> None:
    """RemoteScorer on a mock TEI server: the async path sends from the event loop's thread."""
    httpx = pytest.importorskip("httpx")
    remote = pytest.importorskip("bge_rerank_plugins.remote")
    seen: list[int] = []

    def tei(request):
        seen.append(threading.get_ident())
        body = json.loads(request.content)
        scores = [float(len(t)) / 100 for t in body["texts"]]
        return httpx.Response(200, json=[{"index": i, "score": s} for i, s in enumerate(scores)])

    async def atei(request):
        await request.aread()
        return tei(request)

    scorer = remote.RemoteScorer(
        "http://rerank.test/rerank",
        max_batch=16,  # no GET /info probe
        transport=httpx.MockTransport(tei),
        async_transport=httpx.MockTransport(atei),
    )
    reranker = BGEReranker(scorer=scorer, top_n=3)
    assert reranker.model == scorer.model_name
    sync = reranker.postprocess_nodes(make_nodes(), query_str="pandas")

    async def main() -> tuple[list[NodeWithScore], int]:
        out = await reranker.apostprocess_nodes(make_nodes(), query_str="pandas")
        return out, threading.get_ident()

    seen.clear()
    out, loop_thread = asyncio.run(main())
    assert seen and set(seen) == {loop_thread}  # no worker thread
    assert ranking(out) == ranking(sync)
    longest = max(range(len(RECORDS)), key=lambda i: len(make_nodes()[i].node.get_content("embed")))
    assert out[0].node.node_id == f"n{longest}"  # scored the EMBED text (title included)
