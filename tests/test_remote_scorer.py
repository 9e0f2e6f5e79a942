"""``RemoteScorer`` (issue 24): the scorer's API over HTTP, against ``bge-rerank serve`` started
for real with a small ``--max-documents`` (so every call is split into several requests), and
against ``httpx.MockTransport`` for retries, ``Retry-After``, timeouts and bad answers."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

from bge_rerank_plugins import CrossEncoderScorer, Ranked  # noqa: E402
from bge_rerank_plugins.errors import RerankerError  # noqa: E402
from bge_rerank_plugins.remote import RemoteRerankError, RemoteScorer  # noqa: E402
from bge_rerank_plugins.remote import http as remote_http  # noqa: E402
from bge_rerank_plugins.testing import free_loopback_port  # noqa: E402

pytestmark = pytest.mark.server

KEY = "s3cret"
QUERY = "what do giant pandas eat?"
TEXTS = [
    "The giant panda's diet is almost entirely bamboo.",
    "Pandas is a Python library for data frames.",
    "Red pandas also eat bamboo, plus fruit and insects.",
    "Beijing is the capital of China.",
    "Bamboo grows fast.",
    "A bear in the mountains of Sichuan.",
    "Data frames have rows and columns.",
]
CLOSE = {"rel": 1e-5, "abs": 1e-6}


def _serve_argv(model: Path, port: int) -> list[str]:
    return [
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--max-documents",
        "3",
        "--api-key",
        KEY,
        "--log-level",
        "warning",
    ]


def _wait_healthy(url: str, alive, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert alive(), "bge-rerank serve exited during start-up"
        assert time.monotonic() < deadline, f"bge-rerank serve did not start in {timeout:g} s"
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served(tiny_bert: Path) -> Iterator[str]:
    """``bge-rerank serve --max-documents 3 --api-key ...``, run by the CLI's own ``main`` on a
    thread (the CLI parses the flags and builds the ServerConfig; only the uvicorn server is
    kept, so the test can stop it). The subprocess form is test_the_cli_subprocess below."""
    from bge_rerank_plugins import cli
    from bge_rerank_plugins.server import build_server

    port = free_loopback_port()
    servers = []

    def run_server(config, *, host, port, log_level):
        server = build_server(config, host=host, port=port, log_level=log_level)
        servers.append(server)
        server.run()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("bge_rerank_plugins.server.run_server", run_server)
        patch.delenv("BGE_RERANK_API_KEY", raising=False)
        thread = threading.Thread(target=cli.main, args=(_serve_argv(tiny_bert, port),))
        thread.daemon = True
        thread.start()
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, thread.is_alive)
    yield url
    servers[0].should_exit = True
    thread.join(30)


@pytest.mark.slow
def test_the_cli_subprocess(tiny_bert, local):
    """The same through a real ``bge-rerank serve`` process (slow: it imports torch anew)."""
    port = free_loopback_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("BGE_RERANK_API_KEY", None)
    command = [sys.executable, "-m", "bge_rerank_plugins.cli", *_serve_argv(tiny_bert, port)]
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, lambda: process.poll() is None, timeout=300)
        remote = RemoteScorer(url, api_key=KEY)
        assert remote.score(QUERY, TEXTS) == pytest.approx(local.score(QUERY, TEXTS), **CLOSE)
        assert remote.max_batch == 3
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def local(tiny_bert: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(tiny_bert)


# ---------------------------------------------------------------------------- the real server
@pytest.mark.parametrize("dialect", ["auto", "tei", "cohere", "vllm"])
def test_scores_equal_the_in_process_scorer_in_every_dialect(served, local, dialect):
    with RemoteScorer(served, dialect=dialect, api_key=KEY) as remote:
        assert remote.score(QUERY, TEXTS) == pytest.approx(local.score(QUERY, TEXTS), **CLOSE)
        assert remote.max_batch == 3  # learned from /info: the server's --max-documents
        assert remote.dialect == ("tei" if dialect == "auto" else dialect)
        ranked = remote.rank(QUERY, TEXTS, top_k=4)
        want = local.rank(QUERY, TEXTS, top_k=4)
        assert [r.index for r in ranked] == [r.index for r in want]
        assert all(isinstance(r, Ranked) and r.passage == TEXTS[r.index] for r in ranked)
        queries = [QUERY, "capital of china"]
        many = remote.score_many(queries, [TEXTS[:5], TEXTS[2:]])
        for got, want in zip(many, local.score_many(queries, [TEXTS[:5], TEXTS[2:]])):
            assert got == pytest.approx(want, **CLOSE)
        if dialect != "cohere":
            raw = remote.score(QUERY, TEXTS, normalize=False)
            assert raw == pytest.approx(local.score(QUERY, TEXTS, normalize=False), **CLOSE)


@pytest.mark.parametrize("dialect", ["tei", "cohere"])
def test_rank_fuses_as_the_in_process_scorer(served, local, dialect):
    from bge_rerank_plugins.fusion import FusionConfig

    first = [float(len(TEXTS) - i) for i in range(len(TEXTS))]
    fusion = FusionConfig(method="blend", weight=0.5)
    remote = RemoteScorer(served, dialect=dialect, api_key=KEY)
    got = remote.rank(QUERY, TEXTS, top_k=5, first_stage_scores=first, fusion=fusion)
    want = local.rank(QUERY, TEXTS, top_k=5, first_stage_scores=first, fusion=fusion)
    assert [r.index for r in got] == [r.index for r in want]
    assert [r.score for r in got] == pytest.approx([r.score for r in want], **CLOSE)
    assert [r.reranker_score for r in got] == pytest.approx(
        [r.reranker_score for r in want], **CLOSE
    )
    assert all(r.first_stage_score == first[r.index] and r.reranked for r in got)
    with pytest.raises(TypeError, match="calibrated"):
        remote.rank(QUERY, TEXTS, normalize="calibrated")


def test_an_endpoint_url_sets_the_dialect(served, local):
    for path, dialect in (("/v1/rerank", "cohere"), ("/v1/score", "vllm"), ("/rerank", "tei")):
        remote = RemoteScorer(served + path, api_key=KEY, max_batch=2)
        assert remote.dialect == dialect
        assert remote.score(QUERY, TEXTS) == pytest.approx(local.score(QUERY, TEXTS), **CLOSE)


def test_async_path(served, local):
    remote = RemoteScorer(served, api_key=KEY)

    async def main():
        async with remote:
            scores, ranked, many = await asyncio.gather(
                remote.ascore(QUERY, TEXTS),
                remote.arank(QUERY, TEXTS, top_k=2),
                remote.ascore_many([QUERY, "bamboo"], [TEXTS, TEXTS[:2]]),
            )
            pairs = await remote.ascore_pairs([(QUERY, TEXTS[0]), ("bamboo", TEXTS[4])])
        return scores, ranked, many, pairs

    scores, ranked, many, pairs = asyncio.run(main())
    assert scores == pytest.approx(local.score(QUERY, TEXTS), **CLOSE)
    assert [r.index for r in ranked] == [r.index for r in local.rank(QUERY, TEXTS, top_k=2)]
    assert many[1] == pytest.approx(local.score("bamboo", TEXTS[:2]), **CLOSE)
    want = local.score_pairs([(QUERY, TEXTS[0]), ("bamboo", TEXTS[4])])
    assert pairs == pytest.approx(want, **CLOSE)


def test_the_api_key_is_sent_and_a_missing_one_is_named(served):
    with pytest.raises(RemoteRerankError, match="api_key=") as caught:
        RemoteScorer(served, dialect="tei", max_batch=3).score(QUERY, TEXTS[:2])
    assert caught.value.status == 401
    with pytest.raises(RemoteRerankError, match="api_key="):
        RemoteScorer(served).score(QUERY, TEXTS[:2])  # the probe itself is refused
    assert len(RemoteScorer(served, api_key=KEY).score(QUERY, TEXTS[:2])) == 2


def test_a_max_batch_over_the_servers_limit_names_the_fix(served):
    remote = RemoteScorer(served, dialect="tei", api_key=KEY, max_batch=10)
    with pytest.raises(RemoteRerankError, match="max_batch="):
        remote.score(QUERY, TEXTS)


# ---------------------------------------------------------------------------- MockTransport
def _tei(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    items = [{"index": i, "score": float(len(t))} for i, t in enumerate(body["texts"])]
    return httpx.Response(200, json=sorted(items, key=lambda it: -it["score"]))


class Flaky:
    """Answers ``failures`` (status, Retry-After) first, then as TEI; records what it saw."""

    def __init__(self, failures: list[tuple[int, str | None]], body: dict | None = None) -> None:
        self.failures = list(failures)
        self.body = body or {"error": "busy"}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.failures:
            status, retry_after = self.failures.pop(0)
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            return httpx.Response(status, json=self.body, headers=headers)
        return _tei(request)


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The retry waits of this test's thread (skipped, recorded). The patch is global, so other
    threads -- the module's uvicorn server ticks with ``asyncio.sleep(0.1)`` -- really sleep."""
    seen: list[float] = []
    mine = threading.get_ident()
    real_sleep, real_async_sleep = time.sleep, asyncio.sleep

    def fake_sleep(seconds: float) -> None:
        if threading.get_ident() != mine:
            return real_sleep(seconds)
        seen.append(seconds)

    async def fake_async_sleep(seconds: float, result=None):
        if threading.get_ident() != mine:
            return await real_async_sleep(seconds, result)
        seen.append(seconds)
        return result

    monkeypatch.setattr(remote_http.time, "sleep", fake_sleep)
    monkeypatch.setattr(remote_http.asyncio, "sleep", fake_async_sleep)
    return seen


def test_429_and_503_are_retried_honouring_retry_after(waits):
    flaky = Flaky([(429, "2"), (503, None), (503, "0.25")])
    remote = RemoteScorer(
        "http://rerank.test",
        dialect="tei",
        max_batch=8,
        api_key="k",
        transport=httpx.MockTransport(flaky),
    )
    assert remote.score("q", ["a", "bbb"]) == [1.0, 3.0]
    assert waits == [2.0, 1.0, 0.25]  # Retry-After, backoff 0.5 * 2**1, Retry-After
    assert all(r.headers["Authorization"] == "Bearer k" for r in flaky.requests)
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= remote_http.retry_delay(date, 0) <= 30
    assert remote_http.retry_delay("3600", 0) == remote_http.MAX_RETRY_WAIT_S


def test_retries_are_bounded_then_a_clear_error(waits):
    flaky = Flaky([(503, "1")] * 10)
    remote = RemoteScorer(
        "http://rerank.test",
        dialect="tei",
        max_batch=8,
        max_retries=2,
        transport=httpx.MockTransport(flaky),
    )
    with pytest.raises(RemoteRerankError, match="max_retries=2") as caught:
        remote.score("q", ["a"])
    assert caught.value.status == 503 and isinstance(caught.value, RerankerError)
    assert len(flaky.requests) == 3 and waits == [1.0, 1.0]
    flaky = Flaky([(400, None)])
    remote = RemoteScorer(
        "http://rerank.test", dialect="tei", max_batch=8, transport=httpx.MockTransport(flaky)
    )
    with pytest.raises(RemoteRerankError, match="400"):
        remote.score("q", ["a"])
    assert len(flaky.requests) == 1  # a 400 is not retried


def test_the_async_path_retries_too(waits):
    flaky = Flaky([(429, "1.5")])
    remote = RemoteScorer(
        "http://rerank.test",
        dialect="tei",
        max_batch=1,
        async_transport=httpx.MockTransport(flaky),
    )
    scores = asyncio.run(remote.ascore("q", ["aa", "b", "cccc"]))
    assert scores == [2.0, 1.0, 4.0]
    assert waits == [1.5] and len(flaky.requests) == 4  # one request per text (max_batch=1)


def test_chunks_restore_the_original_indices():
    seen: list[list[str]] = []

    def reversed_tei(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(
                200, json={"model_type": {"reranker": {}}, "max_client_batch_size": 2}
            )
        texts = json.loads(request.content)["texts"]
        seen.append(texts)
        items = [{"index": i, "score": float(t)} for i, t in enumerate(texts)]
        return httpx.Response(200, json=items[::-1])

    remote = RemoteScorer("http://rerank.test", transport=httpx.MockTransport(reversed_tei))
    texts = [str(n) for n in range(7)]
    assert remote.score("q", texts) == [float(n) for n in range(7)]
    assert seen == [["0", "1"], ["2", "3"], ["4", "5"], ["6"]]
    assert remote.dialect == "tei" and remote.max_batch == 2


def test_auto_without_info_probes_v1_models_then_falls_back_to_cohere():
    def vllm(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": []})
        if request.url.path == "/score":
            body = json.loads(request.content)
            data = [{"index": i, "score": 0.5} for i in range(len(body["text_2"]))]
            return httpx.Response(200, json={"data": data})
        return httpx.Response(404, json={"error": "no"})

    remote = RemoteScorer("http://rerank.test", transport=httpx.MockTransport(vllm))
    assert remote.score("q", ["a", "b"]) == [0.5, 0.5]
    assert (remote.dialect, remote.max_batch) == ("vllm", 32)

    def cohere(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/rerank":
            body = json.loads(request.content)
            results = [{"index": i, "relevance_score": 0.1} for i in range(len(body["documents"]))]
            return httpx.Response(200, json={"results": results})
        return httpx.Response(404)

    remote = RemoteScorer(
        "http://rerank.test", model="rerank-v3.5", transport=httpx.MockTransport(cohere)
    )
    assert remote.score("q", ["a"]) == [0.1] and remote.dialect == "cohere"
    with pytest.raises(ValueError, match="normalize=False"):
        remote.score("q", ["a"], normalize=False)


def test_rank_timeout_falls_back_to_the_first_stage_order():
    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(0.3)
        return _tei(request)

    async def aslow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return _tei(request)

    remote = RemoteScorer(
        "http://rerank.test",
        dialect="tei",
        max_batch=1,
        transport=httpx.MockTransport(slow),
        async_transport=httpx.MockTransport(aslow),
    )
    texts = ["a", "bbbb", "cc", "ddd", "e"]
    first = [0.1, 0.2, 0.9, 0.3, 0.4]
    started = time.monotonic()
    ranked = remote.rank("q", texts, first_stage_scores=first, timeout=0.5)
    assert time.monotonic() - started < 1.5  # stopped at a request boundary, not after 5
    assert [r.index for r in ranked] == [2, 4, 3, 1, 0] and not any(r.reranked for r in ranked)
    started = time.monotonic()
    ranked = asyncio.run(remote.arank("q", texts, top_k=2, timeout=0.2))
    assert time.monotonic() - started < 2  # the requests in flight were cancelled
    assert [r.index for r in ranked] == [0, 1] and not ranked[0].reranked
    done = remote.rank("q", texts[:1], timeout=30)  # in time: reranked
    assert done[0].reranked and done[0].reranker_score == pytest.approx(1 / (1 + math.exp(-1)))


# ---------------------------------------------------------------------------- deadlines
# What ``bge-rerank serve`` answers for a request past its --score-timeout (server/service.py).
SERVER_DEADLINE = {
    "error": "Scoring did not finish within the server's score_timeout_s=0.2 s",
    "message": "Scoring did not finish within the server's score_timeout_s=0.2 s",
    "error_type": "deadline_exceeded",
    "field": None,
}
DEADLINE_TEXTS = ["a", "bbbb", "cc", "ddd", "e"]
DEADLINE_FIRST = [0.1, 0.2, 0.9, 0.3, 0.4]
FIRST_ORDER = [2, 4, 3, 1, 0]  # DEADLINE_FIRST best first; the reranker's order is [1, 3, 2, ...]


def _mock_remote(handler, **options) -> RemoteScorer:
    options = {"dialect": "tei", "max_batch": 8, **options}
    return RemoteScorer(
        "http://rerank.test",
        transport=httpx.MockTransport(handler),
        async_transport=httpx.MockTransport(handler),
        **options,
    )


def _rank(remote: RemoteScorer, mode: str, texts=DEADLINE_TEXTS, **options) -> list[Ranked]:
    if mode == "sync":
        return remote.rank("q", texts, **options)
    return asyncio.run(remote.arank("q", texts, **options))


def _assert_first_stage(ranked: list[Ranked]) -> None:
    assert [r.index for r in ranked] == FIRST_ORDER
    assert [r.score for r in ranked] == [DEADLINE_FIRST[i] for i in FIRST_ORDER]
    assert all(r.reranked is False and r.reranker_score is None for r in ranked)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_server_deadline_503_falls_back_at_once_without_a_retry(waits, caplog, mode):
    from bge_rerank_plugins.ranking import deadline_fallbacks

    server = Flaky([(503, "1")] * 10, body=SERVER_DEADLINE)
    remote = _mock_remote(server, max_retries=3)
    fallbacks = deadline_fallbacks()
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins.ranking"):
        ranked = _rank(remote, mode, first_stage_scores=DEADLINE_FIRST, timeout=5)
    _assert_first_stage(ranked)
    assert len(server.requests) == 1 and waits == []  # not retried, not waited for
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "reranked=False" in warned[0].getMessage()
    assert deadline_fallbacks() == fallbacks + 1
    # Without first-stage scores the fallback is the input order, scored 1 / (1 + position).
    server = Flaky([(503, None)], body=SERVER_DEADLINE)
    ranked = _rank(_mock_remote(server), mode, top_k=2, timeout=5)
    assert [(r.index, r.score, r.reranked) for r in ranked] == [(0, 1.0, False), (1, 0.5, False)]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_without_a_timeout_a_server_deadline_503_is_retried_then_raises(waits, mode):
    server = Flaky([(503, "1")] * 10, body=SERVER_DEADLINE)
    remote = _mock_remote(server, max_retries=2)
    with pytest.raises(RemoteRerankError, match="max_retries=2") as caught:
        _rank(remote, mode, first_stage_scores=DEADLINE_FIRST)
    assert caught.value.status == 503 and "score_timeout_s=0.2" in str(caught.value)
    assert len(server.requests) == 3 and waits == [1.0, 1.0]  # as before: retried, then raised
    server = Flaky([(503, "1")], body=SERVER_DEADLINE)  # a retry that succeeds: reranked
    ranked = _rank(_mock_remote(server), mode)
    assert [r.index for r in ranked] == [1, 3, 2, 0, 4] and ranked[0].reranked
    assert waits == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_under_a_deadline_only_a_retry_that_ends_in_time_is_waited_for(waits, mode):
    server = Flaky([(503, "0.25"), (429, None)])  # plain "busy": retried within the deadline
    ranked = _rank(_mock_remote(server), mode, timeout=5)
    assert ranked[0].reranked and waits == [0.25, 1.0] and len(server.requests) == 3
    server = Flaky([(503, "30")])  # the wait alone would pass the deadline: the first stage
    ranked = _rank(_mock_remote(server), mode, first_stage_scores=DEADLINE_FIRST, timeout=5)
    _assert_first_stage(ranked)
    assert waits == [0.25, 1.0] and len(server.requests) == 1
    server = Flaky([(400, None)])  # not a deadline: still an error, deadline or not
    with pytest.raises(RemoteRerankError, match="400"):
        _rank(_mock_remote(server), mode, timeout=5)
    server = Flaky([(503, None)] * 10)  # the retries are spent in time: raised as before
    with pytest.raises(RemoteRerankError, match="max_retries=1"):
        _rank(_mock_remote(server, max_retries=1), mode, timeout=5)


class Stalling:
    """Answers as TEI after ``seconds``; a request whose read timeout is shorter gets
    ``httpx.ReadTimeout`` at that timeout, as a real transport does (``MockTransport`` itself
    does not enforce timeouts)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.timeouts: list[float | None] = []

    def _read_timeout(self, request: httpx.Request) -> float | None:
        read = request.extensions["timeout"]["read"]
        self.timeouts.append(read)
        return read if read is not None and read < self.seconds else None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        cut = self._read_timeout(request)
        time.sleep(self.seconds if cut is None else cut)
        if cut is not None:
            raise httpx.ReadTimeout("timed out", request=request)
        return _tei(request)


class AsyncStalling(Stalling):
    """:class:`Stalling` on the event loop (``asyncio.sleep``, so cancellable)."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:  # type: ignore[override]
        cut = self._read_timeout(request)
        await asyncio.sleep(self.seconds if cut is None else cut)
        if cut is not None:
            raise httpx.ReadTimeout("timed out", request=request)
        return _tei(request)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_request_that_stalls_past_the_timeout_returns_the_first_stage_order_in_time(mode):
    stalling = Stalling(5.0) if mode == "sync" else AsyncStalling(5.0)
    remote = _mock_remote(stalling, timeout=30.0)  # the per-request timeout is far off
    started = time.monotonic()
    ranked = _rank(remote, mode, first_stage_scores=DEADLINE_FIRST, timeout=0.5)
    assert time.monotonic() - started < 1.0  # within 2x the timeout, not 5 s (nor 30 s)
    _assert_first_stage(ranked)
    assert len(stalling.timeouts) == 1 and 0 < stalling.timeouts[0] <= 0.5  # cut to the time left
    # Without timeout= the request keeps its own timeout, and timing out is an error as before.
    remote = _mock_remote(Stalling(5.0) if mode == "sync" else AsyncStalling(5.0), timeout=0.2)
    with pytest.raises(RemoteRerankError, match=r"timeout=0\.2"):
        _rank(remote, mode)


def test_async_a_server_deadline_cancels_the_other_requests_in_flight():
    cancelled: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["texts"] == ["a"]:
            return httpx.Response(503, json=SERVER_DEADLINE, headers={"Retry-After": "1"})
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise
        return _tei(request)

    async def main() -> tuple[list[Ranked], float]:
        remote = _mock_remote(handler, max_batch=1)
        started = time.monotonic()
        ranked = await remote.arank(
            "q", DEADLINE_TEXTS, first_stage_scores=DEADLINE_FIRST, timeout=30
        )
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.05)  # let the cancellations land
        await remote.aclose()
        return ranked, elapsed

    ranked, elapsed = asyncio.run(main())
    _assert_first_stage(ranked)
    assert elapsed < 2 and len(cancelled) == 4  # the other four requests stopped, not run on


def test_a_served_deadline_falls_back_end_to_end(tiny_bert: Path):
    """A real ``bge-rerank serve`` app over a real socket: its 503 and a stalled answer."""
    import threading as _threading

    from bge_rerank_plugins.server import ServerConfig, build_server

    release = _threading.Event()

    class HeldScorer:
        """Holds every batch until released: the server's deadline passes first."""

        device = "cpu"
        model_max_length = 512

        def score_pairs(self, pairs, normalize=False):
            release.wait(10)
            return [float(len(p)) for _, p in pairs]

    port = free_loopback_port()
    config = ServerConfig(model=str(tiny_bert), score_timeout_s=1.5)
    server = build_server(
        config, port=port, log_level="warning", graceful_timeout_s=1, scorer_factory=HeldScorer
    )
    thread = _threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, thread.is_alive, timeout=30)
        remote = RemoteScorer(url, dialect="tei", max_batch=8, max_retries=3)
        started = time.monotonic()  # the client's deadline first: the socket read is cut
        ranked = remote.rank("q", DEADLINE_TEXTS, first_stage_scores=DEADLINE_FIRST, timeout=0.5)
        assert time.monotonic() - started < 1.0
        _assert_first_stage(ranked)
        started = time.monotonic()  # the server's first: its 503, not retried
        ranked = remote.rank("q", DEADLINE_TEXTS, first_stage_scores=DEADLINE_FIRST, timeout=10)
        assert time.monotonic() - started < 5
        _assert_first_stage(ranked)
        release.set()
        ranked = remote.rank("q", DEADLINE_TEXTS, timeout=10)  # in time: reranked
        assert ranked[0].reranked and ranked[0].index == 1
        metrics = httpx.get(f"{url}/metrics").text
        # The server counts its own 503 (the first request's too, if it ran to the deadline).
        counted = re.search(r"^bge_rerank_deadline_fallbacks_total (\S+)$", metrics, re.M)
        assert counted is not None and float(counted.group(1)) >= 1
        remote.close()
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_adapter_backed_by_a_remote_scorer_keeps_the_first_stage_order(waits, mode):
    li = pytest.importorskip("llama_index.core.schema")
    from bge_rerank_plugins.llama_index import BGEReranker

    server = Flaky([(503, "1")] * 10, body=SERVER_DEADLINE)
    reranker = BGEReranker(scorer=_mock_remote(server), timeout=5, top_n=3)
    given = [
        li.NodeWithScore(node=li.TextNode(text=t, id_=f"n{i}"), score=s)
        for i, (t, s) in enumerate(zip(DEADLINE_TEXTS, DEADLINE_FIRST))
    ]
    if mode == "sync":
        out = reranker.postprocess_nodes(given, query_str="q")
    else:
        out = asyncio.run(reranker.apostprocess_nodes(given, query_str="q"))
    assert [n.node.node_id for n in out] == [f"n{i}" for i in FIRST_ORDER[:3]]
    assert all(n.node.metadata["reranked"] is False for n in out)
    assert len(server.requests) == 1 and waits == []


def test_timeouts_and_malformed_answers_are_clear_errors():
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    remote = RemoteScorer(
        "http://rerank.test",
        dialect="tei",
        max_batch=4,
        timeout=0.5,
        transport=httpx.MockTransport(slow),
    )
    with pytest.raises(RemoteRerankError, match=r"timeout=0\.5"):
        remote.score("q", ["a"])

    def short(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[{"index": 0, "score": 1.0}])

    remote = RemoteScorer(
        "http://rerank.test", dialect="tei", max_batch=4, transport=httpx.MockTransport(short)
    )
    with pytest.raises(RerankerError, match="index 1"):
        remote.score("q", ["a", "b"])
    assert remote.score("q", []) == []  # nothing to score: no request


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="dialect"):
        RemoteScorer("http://x", dialect="openai")
    with pytest.raises(ValueError, match="url"):
        RemoteScorer("x:8080")
    with pytest.raises(ValueError, match="dialect='cohere'"):
        RemoteScorer("http://x/score", dialect="cohere")
    with pytest.raises(ValueError, match="max_batch"):
        RemoteScorer("http://x", max_batch=0)
    with pytest.raises(TypeError, match="max_retries"):
        RemoteScorer("http://x", max_retries=1.5)
    with pytest.raises(TypeError, match="normalize"):
        RemoteScorer("http://x", normalize="no")
    with pytest.raises(ValueError, match="normalize=False"):
        RemoteScorer("http://x", dialect="cohere", normalize=False)
    with pytest.raises(ValueError, match="timeout"):
        RemoteScorer("http://x", timeout=0)
    with pytest.raises(TypeError, match="transport"):
        RemoteScorer("http://x", transport=object())
    remote = RemoteScorer("http://x", dialect="tei", max_batch=2)
    with pytest.raises(TypeError, match="query"):
        remote.score(None, ["a"])
    with pytest.raises(ValueError, match="top_k"):
        remote.rank("q", ["a"], top_k=-1)


@pytest.mark.parametrize(
    "name",
    [
        "bge_rerank_plugins.remote",
        "bge_rerank_plugins.remote.dialects",
        "bge_rerank_plugins.remote.http",
    ],
)
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
