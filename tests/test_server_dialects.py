"""Issue 24, server side: every client's truncation knob is honoured, ``/info`` has TEI's shape,
503s carry ``Retry-After``, an empty Cohere ``documents`` list is Cohere's 400, and vLLM's
``/score`` and OpenAI's ``/v1/models`` are served.

Expected scores come from the in-process scorer built with the equivalent ``max_length`` (or
the text cut by the tokenizer), never from the server's own truncation code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from bge_rerank_plugins import CrossEncoderScorer  # noqa: E402
from bge_rerank_plugins.server import ServerConfig, build_server, create_app  # noqa: E402
from bge_rerank_plugins.server.service import LOADING_RETRY_AFTER_S  # noqa: E402
from bge_rerank_plugins.testing import free_loopback_port  # noqa: E402

pytestmark = pytest.mark.server

QUERY = "what do giant pandas eat in the wild"
LONG = " ".join(
    ["the giant panda eats bamboo shoots and leaves in the mountain forests of china"] * 30
)
TEXTS = ["Pandas eat bamboo.", LONG, "Beijing is the capital of China."]
CLOSE = {"rel": 1e-5, "abs": 1e-6}


@pytest.fixture(scope="module")
def scorer(tiny_bert: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(tiny_bert)


@pytest.fixture(scope="module")
def client(tiny_bert: Path) -> Iterator[TestClient]:
    config = ServerConfig(model=str(tiny_bert), max_documents=5, served_model_name="tiny")
    with TestClient(create_app(config)) as c:
        deadline = time.monotonic() + 60
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.05)
        yield c


@pytest.fixture(scope="module")
def url(tiny_bert: Path) -> Iterator[str]:
    """``bge-rerank serve``'s server (build_server) on 127.0.0.1, for the real clients."""
    port = free_loopback_port()
    config = ServerConfig(model=str(tiny_bert), max_documents=5)
    server = build_server(config, port=port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield base
    server.should_exit = True
    thread.join(30)


def _tokens(scorer: CrossEncoderScorer, text: str) -> list[tuple[int, int]]:
    return scorer.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]


def _specials(scorer: CrossEncoderScorer) -> int:
    return scorer.tokenizer.num_special_tokens_to_add(pair=True)


# ---------------------------------------------------------------------------- TEI
def test_tei_truncate_false_refuses_an_over_long_pair_naming_it(client, scorer):
    assert len(_tokens(scorer, LONG)) > scorer.model_max_length  # the case is real
    body = {"query": QUERY, "texts": TEXTS, "truncate": False}
    r = client.post("/rerank", json=body)
    assert r.status_code == 413, r.text  # TEI's status for an over-long input
    assert r.json()["field"] == "texts[1]"
    assert "truncate" in r.json()["error"]
    # short texts pass with truncate=false, and any truncate=true/null cuts as the scorer does
    short = client.post("/rerank", json={**body, "texts": [TEXTS[0], TEXTS[2]]})
    assert short.status_code == 200
    for truncate in (True, None):
        items = client.post("/rerank", json={**body, "truncate": truncate}).json()
        got = {it["index"]: it["score"] for it in items}
        assert [got[i] for i in range(3)] == pytest.approx(scorer.score(QUERY, TEXTS), **CLOSE)


def test_tei_truncation_direction_left_keeps_the_end_of_the_passage(client, scorer):
    text = LONG + " and finally the red panda eats fruit"
    offsets = _tokens(scorer, text)
    limit = min(scorer.model_max_length, 512)
    keep = limit - _specials(scorer) - len(_tokens(scorer, QUERY))
    tail = text[offsets[len(offsets) - keep][0] :]
    want_left = scorer.score(QUERY, [tail])[0]
    for direction in ("Left", "left"):  # TEI sends "Left"
        body = {"query": QUERY, "texts": [text], "truncation_direction": direction}
        (item,) = client.post("/rerank", json=body).json()
        assert item["score"] == pytest.approx(want_left, **CLOSE)
    (right,) = client.post("/rerank", json={"query": QUERY, "texts": [text]}).json()
    assert right["score"] == pytest.approx(scorer.score(QUERY, [text])[0], **CLOSE)
    assert right["score"] != pytest.approx(want_left, **CLOSE)  # the knob changed something
    r = client.post("/rerank", json={"query": QUERY, "texts": [text], "truncation_direction": "up"})
    assert (r.status_code, r.json()["field"]) == (422, "truncation_direction")


# ---------------------------------------------------------------------------- Cohere, vLLM knobs
def test_cohere_v2_max_tokens_per_doc_with_the_cohere_client(url, tiny_bert, scorer):
    cohere = pytest.importorskip("cohere")
    n = 12
    pair_length = len(_tokens(scorer, QUERY)) + n + _specials(scorer)
    want = CrossEncoderScorer(tiny_bert, max_length=pair_length).score(QUERY, TEXTS)
    client = cohere.ClientV2(api_key="unused", base_url=url)
    response = client.rerank(model="tiny", query=QUERY, documents=TEXTS, max_tokens_per_doc=n)
    got = {r.index: r.relevance_score for r in response.results}
    assert [got[i] for i in range(3)] == pytest.approx(want, **CLOSE)
    full = scorer.score(QUERY, TEXTS)
    assert got[1] != pytest.approx(full[1], **CLOSE)  # the long document was cut to n tokens
    assert got[0] == pytest.approx(full[0], **CLOSE)  # a short one was not


def test_vllm_max_tokens_per_query_and_truncate_prompt_tokens(client, tiny_bert, scorer):
    offsets = _tokens(scorer, QUERY)
    cut_query = QUERY[: offsets[2][1]]  # the first 3 tokens
    body = {"query": QUERY, "documents": TEXTS[:1], "max_tokens_per_query": 3}
    (result,) = client.post("/v1/rerank", json=body).json()["results"]
    assert result["relevance_score"] == pytest.approx(
        scorer.score(cut_query, TEXTS[:1])[0], **CLOSE
    )
    want = CrossEncoderScorer(tiny_bert, max_length=40).score(QUERY, TEXTS)
    body = {"query": QUERY, "documents": TEXTS, "truncate_prompt_tokens": 40}
    got = {
        r["index"]: r["relevance_score"]
        for r in client.post("/v2/rerank", json=body).json()["results"]
    }
    assert [got[i] for i in range(3)] == pytest.approx(want, **CLOSE)
    minus_one = client.post("/v2/rerank", json={**body, "truncate_prompt_tokens": -1}).json()
    got = {r["index"]: r["relevance_score"] for r in minus_one["results"]}
    assert [got[i] for i in range(3)] == pytest.approx(scorer.score(QUERY, TEXTS), **CLOSE)
    # vLLM's truncation_side="left" keeps the end of a document, as TEI's "Left" does
    left = {"query": QUERY, "texts": [TEXTS[1]], "truncation_direction": "left"}
    (tei_left,) = client.post("/rerank", json=left).json()
    body = {"query": QUERY, "documents": [TEXTS[1]], "truncation_side": "left"}
    (vllm_left,) = client.post("/v2/rerank", json=body).json()["results"]
    assert vllm_left["relevance_score"] == pytest.approx(tei_left["score"], **CLOSE)
    assert vllm_left["relevance_score"] != pytest.approx(
        scorer.score(QUERY, [TEXTS[1]])[0], **CLOSE
    )
    for field, value in (
        ("max_tokens_per_doc", 0),
        ("truncate_prompt_tokens", -2),
        ("truncation_side", "middle"),
    ):
        r = client.post("/v2/rerank", json={"query": QUERY, "documents": TEXTS, field: value})
        assert (r.status_code, r.json()["field"]) == (422, field)


# ---------------------------------------------------------------------------- empty documents
def test_empty_documents_is_cohere_400_and_bills_nothing(url, client):
    cohere = pytest.importorskip("cohere")
    for path in ("/v1/rerank", "/v2/rerank"):
        r = client.post(path, json={"query": QUERY, "documents": []})
        assert r.status_code == 400
        body = r.json()
        assert body["field"] == "documents" and "must not be empty" in body["message"]
        assert "meta" not in body
    with pytest.raises(cohere.errors.BadRequestError):
        cohere.ClientV2(api_key="unused", base_url=url).rerank(
            model="tiny", query=QUERY, documents=[]
        )


# ---------------------------------------------------------------------------- /info, 503
def test_info_has_tei_shape_read_by_huggingface_hub(url, scorer, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    # offline mode blocks every request, loopback included; this one goes to 127.0.0.1 only
    monkeypatch.setattr(hub.constants, "is_offline_mode", lambda: False)
    assert url.startswith("http://127.0.0.1:")
    info = hub.InferenceClient(model=url, provider="hf-inference").get_endpoint_info()
    assert info["model_type"] == {
        "reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    }
    assert info["max_client_batch_size"] == 5
    assert info["max_input_length"] == scorer.model_max_length
    assert info["auto_truncate"] is True and info["model_dtype"] == "float32"
    assert info["loaded"] is True and info["settings"]["max_documents"] == 5


def test_503_while_loading_has_retry_after():
    release = threading.Event()

    class Slow:
        model_max_length = 512
        device = "cpu"

        def score_pairs(self, pairs, normalize=None):
            return [0.0] * len(pairs)

    def factory():
        release.wait(30)
        return Slow()

    with TestClient(create_app(ServerConfig(model="m"), scorer_factory=factory)) as c:
        for method, path, body in (
            ("post", "/rerank", {"query": "q", "texts": ["a"]}),
            ("post", "/score", {"text_1": "q", "text_2": ["a"]}),
            ("get", "/health", None),
        ):
            r = getattr(c, method)(path, **({"json": body} if body else {}))
            assert r.status_code == 503, path
            assert r.headers["Retry-After"] == str(LOADING_RETRY_AFTER_S), path
        release.set()


# ---------------------------------------------------------------------------- /score, /v1/models
def test_score_in_vllm_shape(client, scorer):
    raw = scorer.score(QUERY, TEXTS, normalize=False)
    for path in ("/score", "/v1/score"):
        body = client.post(path, json={"model": "tiny", "text_1": QUERY, "text_2": TEXTS}).json()
        assert set(body) == {"id", "object", "created", "model", "data", "usage"}
        assert body["object"] == "list" and body["model"] == "tiny"
        assert [d["index"] for d in body["data"]] == [0, 1, 2]  # input order, not sorted
        assert all(d["object"] == "score" for d in body["data"])
        scores = [d["score"] for d in body["data"]]
        assert scores == pytest.approx(scorer.score(QUERY, TEXTS), **CLOSE)
        assert body["usage"]["prompt_tokens"] > 0
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]
    raw_body = {"text_1": [QUERY], "text_2": TEXTS, "use_activation": False}
    got = [d["score"] for d in client.post("/score", json=raw_body).json()["data"]]
    assert got == pytest.approx(raw, **CLOSE)
    zipped = {"text_1": [QUERY, "capital of china"], "text_2": [TEXTS[0], TEXTS[2]]}
    got = [d["score"] for d in client.post("/score", json=zipped).json()["data"]]
    want = scorer.score_pairs([(QUERY, TEXTS[0]), ("capital of china", TEXTS[2])])
    assert got == pytest.approx(want, **CLOSE)
    r = client.post("/score", json={"text_1": ["a", "b"], "text_2": ["x", "y", "z"]})
    assert (r.status_code, r.json()["field"]) == (400, "text_1")
    r = client.post("/score", json={"text_1": "q", "text_2": ["x"] * 6})
    assert (r.status_code, r.json()["field"]) == (413, "text_2")
    cut = client.post("/score", json={"text_1": QUERY, "text_2": TEXTS, "max_tokens_per_doc": 5})
    assert [d["score"] for d in cut.json()["data"]][1] != pytest.approx(
        scorer.score(QUERY, TEXTS)[1], **CLOSE
    )


def test_v1_models_in_openai_shape(client, scorer):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == "tiny" and card["object"] == "model"
    assert isinstance(card["created"], int) and card["owned_by"]
    assert card["max_model_len"] == scorer.model_max_length


@pytest.mark.parametrize(
    "name", ["bge_rerank_plugins.server.truncation", "bge_rerank_plugins.server.routes.vllm"]
)
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
