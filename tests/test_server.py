"""The rerank server, started for real on 127.0.0.1 and called with clients this project did not
write: LlamaIndex's TEI rerank postprocessor and the official cohere SDK (v1 and v2 clients)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")

from bge_rerank_plugins import CrossEncoderScorer  # noqa: E402
from bge_rerank_plugins.server import (  # noqa: E402
    BatchStats,
    DynamicBatcher,
    ServerConfig,
    create_app,
)
from bge_rerank_plugins.server.batcher import BatcherClosedError  # noqa: E402
from bge_rerank_plugins.testing import free_loopback_port  # noqa: E402

pytestmark = pytest.mark.server

QUERY = "what do giant pandas eat?"
TEXTS = [
    "The giant panda's diet is almost entirely bamboo.",
    "Pandas is a Python library for data frames.",
    "Red pandas also eat bamboo, plus fruit and insects.",
    "Beijing is the capital of China.",
]


class RunningServer:
    """uvicorn serving an app on 127.0.0.1 in a background thread."""

    def __init__(self, app, graceful_timeout_s: float = 10.0) -> None:
        self.app = app
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=graceful_timeout_s,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, wait_ready: bool = True) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
            time.sleep(0.02)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while httpx.get(f"{self.url}/health").status_code != 200:
            assert time.monotonic() < deadline, "the model did not load in time"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "uvicorn did not shut down"

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics").text


@contextlib.contextmanager
def serving(config: ServerConfig, **app_options) -> Iterator[RunningServer]:
    server = RunningServer(create_app(config, **app_options)).start()
    try:
        yield server
    finally:
        server.stop()


def _metric(text: str, name: str, labels: str = "") -> float:
    """The value of one Prometheus series (0 if absent)."""
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def server(tiny_bert: Path) -> Iterator[RunningServer]:
    with serving(ServerConfig(model=str(tiny_bert), max_documents=8, max_text_chars=500)) as s:
        yield s


@pytest.fixture(scope="module")
def expected(tiny_bert: Path) -> dict[str, list[float]]:
    scorer = CrossEncoderScorer(tiny_bert)
    return {
        "scores": scorer.score(QUERY, TEXTS),
        "raw": scorer.score(QUERY, TEXTS, normalize=False),
    }


def _order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


# ---------------------------------------------------------------------------- real clients
def test_llama_index_tei_client_gets_in_process_scores(server, expected):
    tei = pytest.importorskip("llama_index.postprocessor.tei_rerank")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    reranker = tei.TextEmbeddingInference(base_url=server.url, top_n=3, model_name="tiny")
    nodes = [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.0) for i, t in enumerate(TEXTS)
    ]
    out = reranker.postprocess_nodes(nodes, QueryBundle(QUERY))
    want = _order(expected["scores"])[:3]
    assert [n.node.node_id for n in out] == [f"n{i}" for i in want]
    assert [n.score for n in out] == pytest.approx(
        [expected["scores"][i] for i in want], rel=1e-5, abs=1e-6
    )


def test_tei_raw_scores_and_return_text(server, expected):
    body = {"query": QUERY, "texts": TEXTS, "raw_scores": True, "return_text": True}
    items = httpx.post(f"{server.url}/rerank", json=body).json()
    assert [it["index"] for it in items] == _order(expected["raw"])
    for it in items:
        assert it["score"] == pytest.approx(expected["raw"][it["index"]], rel=1e-5, abs=1e-6)
        assert it["text"] == TEXTS[it["index"]]
    plain = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "texts": TEXTS}).json()
    assert all(set(it) == {"index", "score"} for it in plain)
    assert all(0.0 < it["score"] < 1.0 for it in plain)


def test_cohere_v1_client(server, expected):
    cohere = pytest.importorskip("cohere")
    client = cohere.Client(api_key="unused", base_url=server.url)
    docs = [TEXTS[0], {"text": TEXTS[1], "source": "docs"}, TEXTS[2], {"text": TEXTS[3]}]
    response = client.rerank(query=QUERY, documents=docs, top_n=2, return_documents=True)
    want = _order(expected["scores"])[:2]
    assert [r.index for r in response.results] == want
    for r in response.results:
        assert r.relevance_score == pytest.approx(expected["scores"][r.index], rel=1e-5, abs=1e-6)
        assert r.document.text == TEXTS[r.index]
    assert response.meta.api_version.version == "1"
    assert response.meta.billed_units.search_units == 1
    assert response.id
    no_docs = client.rerank(query=QUERY, documents=TEXTS)
    assert len(no_docs.results) == len(TEXTS)
    assert all(r.document is None for r in no_docs.results)


def test_cohere_v1_rank_fields(server, tiny_bert):
    cohere = pytest.importorskip("cohere")
    client = cohere.Client(api_key="unused", base_url=server.url)
    docs = [{"title": "Pandas", "body": TEXTS[0]}, {"title": "Code", "body": TEXTS[1]}]
    response = client.rerank(query=QUERY, documents=docs, rank_fields=["title", "body"])
    want = CrossEncoderScorer(tiny_bert).score(QUERY, [f"Pandas\n{TEXTS[0]}", f"Code\n{TEXTS[1]}"])
    got = {r.index: r.relevance_score for r in response.results}
    assert [got[0], got[1]] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_cohere_v2_client(server, expected):
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key="unused", base_url=server.url)
    response = client.rerank(model="tiny", query=QUERY, documents=TEXTS, top_n=3)
    want = _order(expected["scores"])[:3]
    assert [r.index for r in response.results] == want
    assert [r.relevance_score for r in response.results] == pytest.approx(
        [expected["scores"][i] for i in want], rel=1e-5, abs=1e-6
    )
    assert response.meta.api_version.version == "2"


# ---------------------------------------------------------------------------- limits, bad input
def test_too_many_documents_is_413_naming_the_field(server):
    r = httpx.post(f"{server.url}/rerank", json={"query": "q", "texts": ["a"] * 9})
    assert r.status_code == 413
    assert r.json()["field"] == "texts"
    assert "max_documents" in r.json()["error"]
    r = httpx.post(f"{server.url}/v2/rerank", json={"query": "q", "documents": ["a"] * 9})
    assert r.status_code == 413
    assert r.json()["field"] == "documents"


def test_too_long_text_is_413_naming_the_item(server):
    r = httpx.post(f"{server.url}/rerank", json={"query": "q", "texts": ["ok", "x" * 501]})
    assert r.status_code == 413
    assert r.json()["field"] == "texts[1]"
    r = httpx.post(f"{server.url}/v1/rerank", json={"query": "q" * 501, "documents": ["ok"]})
    assert (r.status_code, r.json()["field"]) == (413, "query")


def test_malformed_and_invalid_requests_are_422(server):
    r = httpx.post(
        f"{server.url}/rerank",
        content=b'{"query": "q", "texts": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["field"] == "body"
    r = httpx.post(f"{server.url}/rerank", json={"query": "q"})
    assert (r.status_code, r.json()["field"]) == (422, "texts")
    r = httpx.post(f"{server.url}/v1/rerank", json={"query": "q", "documents": [{"title": "t"}]})
    assert (r.status_code, r.json()["field"]) == (422, "documents[0].text")
    r = httpx.post(f"{server.url}/v2/rerank", json={"query": "q", "documents": ["a"], "top_n": 0})
    assert (r.status_code, r.json()["field"]) == (422, "top_n")
    # the server is still fine afterwards
    assert (
        httpx.post(f"{server.url}/rerank", json={"query": "q", "texts": ["a"]}).status_code == 200
    )


def test_api_key_required_when_configured(tiny_bert, monkeypatch):
    cohere = pytest.importorskip("cohere")
    monkeypatch.setenv("BGE_RERANK_API_KEY", "s3cret")
    config = ServerConfig(model=str(tiny_bert))
    assert config.api_key == "s3cret"
    with serving(config) as s:
        body = {"query": "q", "texts": ["a"]}
        r = httpx.post(f"{s.url}/rerank", json=body)
        assert r.status_code == 401
        assert r.json()["field"] == "Authorization"
        assert r.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(f"{s.url}/rerank", json=body, headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{s.url}/rerank", json=body, headers=right).status_code == 200
        # health and metrics stay open for probes and scrapers
        assert httpx.get(f"{s.url}/health").status_code == 200
        assert (
            cohere.ClientV2(api_key="s3cret", base_url=s.url)
            .rerank(model="m", query="q", documents=["a", "b"])
            .results
        )
        with pytest.raises(cohere.errors.UnauthorizedError):
            cohere.ClientV2(api_key="wrong", base_url=s.url).rerank(
                model="m", query="q", documents=["a"]
            )


# ---------------------------------------------------------------------------- health, metrics
def test_health_is_503_until_the_model_is_loaded(tiny_bert):
    release = threading.Event()

    def slow_factory():
        assert release.wait(30)
        return CrossEncoderScorer(tiny_bert)

    s = RunningServer(create_app(ServerConfig(model=str(tiny_bert)), scorer_factory=slow_factory))
    s.start(wait_ready=False)
    try:
        r = httpx.get(f"{s.url}/health")
        assert (r.status_code, r.json()["status"]) == (503, "loading")
        r = httpx.post(f"{s.url}/rerank", json={"query": "q", "texts": ["a"]})
        assert r.status_code == 503
        release.set()
        s.wait_ready()
        assert httpx.get(f"{s.url}/health").json()["status"] == "ok"
        assert httpx.post(f"{s.url}/rerank", json={"query": "q", "texts": ["a"]}).status_code == 200
    finally:
        release.set()
        s.stop()


def test_health_reports_a_failed_load(tmp_path):
    s = RunningServer(create_app(ServerConfig(model=str(tmp_path / "missing")))).start(False)
    try:
        deadline = time.monotonic() + 20
        while (body := httpx.get(f"{s.url}/health").json())["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert body["status"] == "error"
        r = httpx.post(f"{s.url}/rerank", json={"query": "q", "texts": ["a"]})
        assert r.status_code == 503
        assert "failed to load" in r.json()["error"]
    finally:
        s.stop()


def test_metrics_count_requests_pairs_and_latency(tiny_bert):
    with serving(ServerConfig(model=str(tiny_bert))) as s:
        for _ in range(3):
            httpx.post(f"{s.url}/rerank", json={"query": "q", "texts": TEXTS})
        httpx.post(f"{s.url}/rerank", json={"query": "q"})
        text = s.metrics()
    assert _metric(text, "bge_rerank_requests_total", 'endpoint="/rerank",status="200"') == 3
    assert _metric(text, "bge_rerank_requests_total", 'endpoint="/rerank",status="422"') == 1
    assert _metric(text, "bge_rerank_pairs_scored_total") == 3 * len(TEXTS)
    assert _metric(text, "bge_rerank_batch_pairs_sum") == 3 * len(TEXTS)
    assert _metric(text, "bge_rerank_request_latency_seconds_count", 'endpoint="/rerank"') == 4
    assert _metric(text, "bge_rerank_model_loaded") == 1
    assert "# TYPE bge_rerank_request_latency_seconds histogram" in text


def test_int8_backend_serves_the_in_process_int8_scores(tiny_bert):
    config = ServerConfig(model=str(tiny_bert), backend="torch-int8")
    with serving(config) as s:
        r = httpx.post(f"{s.url}/rerank", json={"query": QUERY, "texts": TEXTS, "raw_scores": True})
    assert r.status_code == 200
    got = {item["index"]: item["score"] for item in r.json()}
    want = CrossEncoderScorer(tiny_bert, backend="torch-int8").score(QUERY, TEXTS, normalize=False)
    exact = CrossEncoderScorer(tiny_bert).score(QUERY, TEXTS, normalize=False)
    assert [got[i] for i in range(len(TEXTS))] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert [got[i] for i in range(len(TEXTS))] != pytest.approx(exact, rel=1e-7, abs=1e-7)
    with pytest.raises(ValueError, match="backend must be one of"):
        ServerConfig(model="m", backend="int8")


# ---------------------------------------------------------------------------- batching
async def _fire(url: str, n: int, texts: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(f"{url}/rerank", json={"query": f"q{i}", "texts": texts})
                for i in range(n)
            )
        )


def test_concurrent_requests_share_batches(tiny_bert):
    config = ServerConfig(
        model=str(tiny_bert), max_batch_wait_ms=300, batch_wait_fraction=None, max_batch_pairs=1000
    )
    with serving(config) as s:
        responses = asyncio.run(_fire(s.url, 8, TEXTS))
        text = s.metrics()
    assert all(r.status_code == 200 for r in responses)
    batches = _metric(text, "bge_rerank_batch_requests_count")
    assert _metric(text, "bge_rerank_batch_requests_sum") == 8
    assert batches < 8, "no requests were merged"
    assert _metric(text, "bge_rerank_batch_pairs_bucket", 'le="4.0"') < batches
    # every request still gets its own scores
    scorer = CrossEncoderScorer(tiny_bert)
    for i, r in enumerate(responses):
        want = scorer.score(f"q{i}", TEXTS)
        got = {it["index"]: it["score"] for it in r.json()}
        assert [got[j] for j in range(len(TEXTS))] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_no_batching_scores_requests_one_at_a_time(tiny_bert):
    config = ServerConfig(model=str(tiny_bert), batching=False, max_batch_wait_ms=0)
    with serving(config) as s:
        responses = asyncio.run(_fire(s.url, 6, TEXTS[:2]))
        text = s.metrics()
    assert all(r.status_code == 200 for r in responses)
    assert _metric(text, "bge_rerank_batch_requests_count") == 6
    assert _metric(text, "bge_rerank_batch_requests_sum") == 6


class _Instrumented:
    """A scorer stand-in: optional delay, a poison passage that fails, and a started event."""

    def __init__(self, scorer: CrossEncoderScorer, delay: float = 0.0) -> None:
        self.scorer = scorer
        self.delay = delay
        self.started = threading.Event()
        self.device = scorer.device
        self.model_max_length = scorer.model_max_length

    def score_pairs(self, pairs, normalize=None):
        self.started.set()
        time.sleep(self.delay)
        if any(p == "BOOM" for _, p in pairs):
            raise RuntimeError("poisoned passage")
        return self.scorer.score_pairs(pairs, normalize=normalize)


def test_a_failing_request_does_not_fail_its_batch_or_the_server(tiny_bert):
    fake = _Instrumented(CrossEncoderScorer(tiny_bert))
    config = ServerConfig(model=str(tiny_bert), max_batch_wait_ms=200, batch_wait_fraction=None)
    with serving(config, scorer_factory=lambda: fake) as s:

        async def mixed():
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(
                    client.post(f"{s.url}/rerank", json={"query": "q", "texts": ["a", "b"]}),
                    client.post(f"{s.url}/rerank", json={"query": "q", "texts": ["BOOM"]}),
                    client.post(f"{s.url}/v2/rerank", json={"query": "q", "documents": ["c"]}),
                )

        ok1, bad, ok2 = asyncio.run(mixed())
        assert (ok1.status_code, bad.status_code, ok2.status_code) == (200, 500, 200)
        assert "poisoned passage" in bad.json()["error"]
        assert httpx.get(f"{s.url}/health").status_code == 200
        assert httpx.post(f"{s.url}/rerank", json={"query": "q", "texts": ["a"]}).status_code == 200


def test_a_slow_client_does_not_block_others(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
        slow.sendall(
            b"POST /rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 500\r\n\r\n{"query": "q", '
        )
        started = time.monotonic()
        r = httpx.post(f"{server.url}/rerank", json={"query": "q", "texts": ["a"]}, timeout=10)
        assert r.status_code == 200
        assert time.monotonic() - started < 5


def test_graceful_shutdown_finishes_in_flight_requests(tiny_bert):
    fake = _Instrumented(CrossEncoderScorer(tiny_bert), delay=1.0)
    s = RunningServer(
        create_app(ServerConfig(model=str(tiny_bert)), scorer_factory=lambda: fake)
    ).start()
    result: Future = Future()

    def call():
        try:
            result.set_result(
                httpx.post(f"{s.url}/rerank", json={"query": "q", "texts": TEXTS}, timeout=30)
            )
        except Exception as error:  # pragma: no cover - reported by the assertion below
            result.set_exception(error)

    threading.Thread(target=call, daemon=True).start()
    assert fake.started.wait(10), "the request never reached the model"
    s.stop()  # asks uvicorn to exit while the request is being scored
    response = result.result(timeout=10)
    assert response.status_code == 200
    assert len(response.json()) == len(TEXTS)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{s.url}/health", timeout=2)


# ---------------------------------------------------------------------------- batcher unit tests
def _recording_batcher(**options):
    calls: list[int] = []
    stats: list[BatchStats] = []

    def score(pairs):
        calls.append(len(pairs))
        return [float(len(p)) for _, p in pairs]

    return DynamicBatcher(score, on_batch=stats.append, **options), calls, stats


def test_batcher_merges_within_the_pair_budget():
    batcher, calls, stats = _recording_batcher(max_batch_pairs=5, max_wait_ms=200)
    batcher.start()
    futures = [batcher.submit([("q", "x" * (i + 1))] * 2) for i in range(5)]
    assert [f.result(10) for f in futures] == [[float(i + 1)] * 2 for i in range(5)]
    batcher.close()
    assert sum(calls) == 10
    assert max(calls) <= 5
    assert calls[0] == 4  # two requests of two pairs fit in five, the third waits
    assert [s.requests for s in stats] == [2, 2, 1]


def test_batcher_disabled_scores_one_request_per_call():
    batcher, calls, _ = _recording_batcher(enabled=False, max_wait_ms=100)
    batcher.start()
    futures = [batcher.submit([("q", "ab")] * 3) for _ in range(4)]
    assert all(f.result(10) == [2.0] * 3 for f in futures)
    batcher.close()
    assert calls == [3, 3, 3, 3]


def test_batcher_close_drains_and_then_refuses():
    gate = threading.Event()

    def score(pairs):
        gate.wait(10)
        return [1.0] * len(pairs)

    batcher = DynamicBatcher(score, max_batch_pairs=1, max_wait_ms=0)
    batcher.start()
    futures = [batcher.submit([("q", "p")]) for _ in range(3)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.set()
    closer.join(10)
    assert [f.result(0) for f in futures] == [[1.0]] * 3
    with pytest.raises(BatcherClosedError):
        batcher.submit([("q", "p")])


def test_batcher_skips_cancelled_requests_and_validates_options():
    gate = threading.Event()
    seen: list[int] = []

    def score(pairs):
        gate.wait(10)
        seen.append(len(pairs))
        return [0.0] * len(pairs)

    batcher = DynamicBatcher(score, enabled=False)
    batcher.start()
    first = batcher.submit([("q", "a")])
    second = batcher.submit([("q", "b"), ("q", "c")])
    assert second.cancel()
    gate.set()
    assert first.result(10) == [0.0]
    batcher.close()
    assert seen == [1]
    with pytest.raises(ValueError, match="max_batch_pairs"):
        DynamicBatcher(score, max_batch_pairs=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        DynamicBatcher(score, max_wait_ms=-1)
    with pytest.raises(ValueError, match="max_documents"):
        ServerConfig(model="m", max_documents=0)


def test_serve_cli_builds_the_config(monkeypatch):
    from bge_rerank_plugins import cli

    seen = {}

    def fake_run(config, *, host, port, log_level):
        seen.update(config=config, host=host, port=port)

    monkeypatch.setattr("bge_rerank_plugins.server.run_server", fake_run)
    monkeypatch.delenv("BGE_RERANK_API_KEY", raising=False)
    code = cli.main(
        [
            "serve",
            "--model",
            "m",
            "--port",
            "9001",
            "--no-batching",
            "--max-batch-wait-ms",
            "0",
            "--max-documents",
            "50",
            "--api-key",
            "k",
            "--backend",
            "torch-int8",
        ]
    )
    assert code == 0
    config = seen["config"]
    assert config.backend == "torch-int8"
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 9001)
    assert (config.model, config.batching, config.max_batch_wait_ms) == ("m", False, 0.0)
    assert (config.max_documents, config.api_key) == (50, "k")


def test_batcher_initializer_runs_on_the_worker_thread():
    names: list[str] = []
    batcher = DynamicBatcher(
        lambda pairs: [0.0] * len(pairs),
        initializer=lambda: names.append(threading.current_thread().name),
    )
    batcher.start()
    assert batcher.submit([("q", "p")]).result(10) == [0.0]
    batcher.close()
    assert names == ["bge-rerank-batcher"]
    with pytest.raises(ValueError, match="torch_threads"):
        ServerConfig(model="m", torch_threads=0)


def test_batcher_adaptive_wait_follows_model_time():
    def slow(pairs):
        time.sleep(0.2)
        return [0.0] * len(pairs)

    batcher = DynamicBatcher(slow, max_wait_ms=15, wait_fraction=0.05)
    assert batcher.wait_s == 0.0  # no model time seen yet: merge only what is queued
    batcher.start()
    batcher.submit([("q", "p")]).result(10)
    assert 0.009 <= batcher.wait_s <= 0.015  # 5% of ~0.2 s, capped at 15 ms
    batcher.close()
    assert DynamicBatcher(slow, max_wait_ms=7).wait_s == pytest.approx(0.007)
    with pytest.raises(ValueError, match="wait_fraction"):
        DynamicBatcher(slow, wait_fraction=1.5)
