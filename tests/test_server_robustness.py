"""The rerank server never answers a wrong result with 200 and never holds a connection for ever.

Issue 19: NaN scores are an error (not ``"score": null``); an empty API key is an error and auth is
logged; request bodies are bounded in size (chunked included) and in time, and so are headers;
input the server cannot tokenize or echo back is a 4xx naming the field; bad options and a model
that fails to load stop the server before it serves. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")

from bge_rerank_plugins import CrossEncoderScorer  # noqa: E402
from bge_rerank_plugins.errors import NonFiniteScoreError, RerankerError  # noqa: E402
from bge_rerank_plugins.server import ServerConfig, create_app  # noqa: E402
from bge_rerank_plugins.testing import free_loopback_port  # noqa: E402

pytestmark = pytest.mark.server

QUERY = "what do giant pandas eat?"
TEXTS = [
    "The giant panda's diet is almost entirely bamboo.",
    "Pandas is a Python library for data frames.",
    "Red pandas also eat bamboo, plus fruit and insects.",
]


class Served:
    """A uvicorn server in a background thread on 127.0.0.1 (built by ``build_server``)."""

    def __init__(self, server, port: int) -> None:
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=server.run, daemon=True)

    def start(self, wait_ready: bool = True) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
            time.sleep(0.02)
        if wait_ready:
            while httpx.get(f"{self.url}/health").status_code != 200:
                assert time.monotonic() < deadline + 30, "the model did not load in time"
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "uvicorn did not shut down"


@contextlib.contextmanager
def serving(config: ServerConfig, *, wait_ready: bool = True, **options) -> Iterator[Served]:
    """``build_server`` (the protocol ``run_server`` uses, header timeout included), running."""
    from bge_rerank_plugins.server import build_server

    port = free_loopback_port()
    server = build_server(
        config, host="127.0.0.1", port=port, log_level="warning", graceful_timeout_s=5, **options
    )
    served = Served(server, port).start(wait_ready)
    try:
        yield served
    finally:
        served.stop()


class FakeScorer:
    """A scorer stand-in returning fixed raw scores, or raising a given error."""

    device = "cpu"
    model_max_length = 512

    def __init__(self, scores=None, error: Exception | None = None) -> None:
        self.scores = scores
        self.error = error

    def score_pairs(self, pairs, normalize=None):
        if self.error is not None:
            raise self.error
        return [self.scores[i % len(self.scores)] for i in range(len(pairs))]


def _post_raw(url: str, body: dict, headers: dict | None = None) -> httpx.Response:
    """POST a JSON body encoded with escapes (lone surrogates survive as \\udxxx)."""
    return httpx.post(
        url,
        content=json.dumps(body).encode("ascii"),
        headers={"content-type": "application/json", **(headers or {})},
        timeout=30,
    )


@pytest.fixture(scope="module")
def server(tiny_bert: Path) -> Iterator[Served]:
    config = ServerConfig(
        model=str(tiny_bert),
        max_documents=16,
        max_text_chars=500,
        max_request_bytes=100_000,
        request_header_timeout_s=1.0,
        request_body_timeout_s=1.0,
    )
    with serving(config) as s:
        yield s


# ---------------------------------------------------------------------------- non-finite scores
@pytest.fixture(scope="module")
def nan_model(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with its classifier weights set to NaN: every score is NaN."""
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    out = tmp_path_factory.mktemp("nan-model")
    shutil.copytree(tiny_bert, out, dirs_exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    model.save_pretrained(out)
    return out


def test_a_nan_model_is_a_json_error_on_every_endpoint_never_null(nan_model):
    with serving(ServerConfig(model=str(nan_model))) as s:
        calls = [
            ("/rerank", {"query": QUERY, "texts": TEXTS}),
            ("/rerank", {"query": QUERY, "texts": TEXTS, "raw_scores": True}),
            ("/v1/rerank", {"query": QUERY, "documents": TEXTS, "return_documents": True}),
            ("/v2/rerank", {"query": QUERY, "documents": TEXTS}),
        ]
        for path, body in calls:
            r = httpx.post(f"{s.url}{path}", json=body, timeout=30)
            assert r.status_code == 500, (path, r.status_code, r.text)
            error = r.json()
            assert error["error_type"] == "non_finite_score"
            assert "NaN" in error["error"] and error["error"] == error["message"]
        # the server itself is fine: it still answers and reports the model as loaded
        assert httpx.get(f"{s.url}/health").status_code == 200


@pytest.mark.parametrize(
    "scores",
    [[float("nan")], [float("inf"), 0.5], [0.1, float("-inf")]],
    ids=["nan", "inf", "-inf"],
)
def test_non_finite_scores_from_any_scorer_are_refused_by_the_server(tiny_bert, scores):
    # A scorer that does not check (a custom factory, another backend): the server checks too,
    # and its own sigmoid never turns a bad score into a number or a null.
    fake = FakeScorer(scores)
    with serving(ServerConfig(model=str(tiny_bert)), scorer_factory=lambda: fake) as s:
        for raw in (False, True):
            r = httpx.post(
                f"{s.url}/rerank", json={"query": "q", "texts": ["a", "b"], "raw_scores": raw}
            )
            assert r.status_code == 500, r.text
            assert r.json()["error_type"] == "non_finite_score"
            assert r.json()["field"] is None
        r = httpx.post(f"{s.url}/v2/rerank", json={"query": "q", "documents": ["a", "b"]})
        assert (r.status_code, r.json()["error_type"]) == (500, "non_finite_score")


def test_scorer_errors_are_clear_json_errors(tiny_bert):
    boom = NonFiniteScoreError("model='m' gave a NaN or infinite score to 1 of 1 pairs")
    with serving(
        ServerConfig(model=str(tiny_bert)), scorer_factory=lambda: FakeScorer(error=boom)
    ) as s:
        r = httpx.post(f"{s.url}/rerank", json={"query": "q", "texts": ["a"]})
        assert r.status_code == 500
        assert r.json()["error_type"] == "non_finite_score"
        assert r.json()["error"] == str(boom)
    other = RerankerError("the model could not score these pairs")
    with serving(
        ServerConfig(model=str(tiny_bert)), scorer_factory=lambda: FakeScorer(error=other)
    ) as s:
        r = httpx.post(f"{s.url}/v1/rerank", json={"query": "q", "documents": ["a"]})
        assert (r.status_code, r.json()["error_type"]) == (500, "model_error")
        assert r.json()["error"] == str(other)


def test_extreme_finite_logits_give_scores_in_0_1(tiny_bert):
    fake = FakeScorer([1e308, -1e308, 800.0, -800.0])
    with serving(ServerConfig(model=str(tiny_bert)), scorer_factory=lambda: fake) as s:
        r = httpx.post(f"{s.url}/rerank", json={"query": "q", "texts": ["a", "b", "c", "d"]})
    assert r.status_code == 200
    scores = {item["index"]: item["score"] for item in r.json()}
    assert scores == {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0}


# ---------------------------------------------------------------------------- API key
def test_an_empty_api_key_is_an_error_even_with_the_variable_set(monkeypatch):
    monkeypatch.setenv("BGE_RERANK_API_KEY", "s3cret")
    with pytest.raises(ValueError, match=r"api_key \(--api-key\) is empty"):
        ServerConfig(model="m", api_key="")
    with pytest.raises(ValueError, match="empty"):
        ServerConfig(model="m", api_key="   ")
    with pytest.raises(ValueError, match="whitespace"):
        ServerConfig(model="m", api_key=" key ")
    monkeypatch.setenv("BGE_RERANK_API_KEY", "")
    with pytest.raises(ValueError, match="BGE_RERANK_API_KEY is set but empty"):
        ServerConfig(model="m")
    monkeypatch.delenv("BGE_RERANK_API_KEY")
    assert ServerConfig(model="m").api_key is None
    assert ServerConfig(model="m", api_key="k").api_key == "k"


def test_serve_cli_refuses_an_empty_api_key_before_starting(monkeypatch, capsys):
    from bge_rerank_plugins import cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr("bge_rerank_plugins.server.run_server", must_not_run)
    monkeypatch.setenv("BGE_RERANK_API_KEY", "s3cret")
    code = cli.main(["serve", "--model", "m", "--api-key", ""])
    assert code != 0
    err = capsys.readouterr().err
    assert "--api-key" in err and "empty" in err
    assert len(err.strip().splitlines()) == 1


def test_auth_on_or_off_is_logged_at_start_up(tiny_bert, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="bge_rerank_plugins.server")
    monkeypatch.delenv("BGE_RERANK_API_KEY", raising=False)
    fake = FakeScorer([0.0])
    with serving(ServerConfig(model=str(tiny_bert)), scorer_factory=lambda: fake):
        pass
    assert any(r.getMessage().startswith("Auth off") for r in caplog.records)
    caplog.clear()
    monkeypatch.setenv("BGE_RERANK_API_KEY", "s3cret")
    with serving(ServerConfig(model=str(tiny_bert)), scorer_factory=lambda: fake):
        pass
    on = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Auth on")]
    assert on and "BGE_RERANK_API_KEY" in on[0]
    assert "s3cret" not in caplog.text


def test_with_auth_on_an_unauthenticated_client_sees_no_model_path_or_settings(
    tiny_bert, monkeypatch
):
    monkeypatch.delenv("BGE_RERANK_API_KEY", raising=False)
    model = str(tiny_bert)
    with serving(ServerConfig(model=model, api_key="s3cret")) as s:
        r = httpx.get(f"{s.url}/info")
        assert r.status_code == 401
        assert model not in r.text
        health = httpx.get(f"{s.url}/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        assert model not in httpx.get(f"{s.url}/metrics").text
        key = {"Authorization": "Bearer s3cret"}
        info = httpx.get(f"{s.url}/info", headers=key).json()
        assert info["settings"]["model"] == model
        assert info["settings"]["api_key"] == "set"
        assert info["auth"] is True
        assert "s3cret" not in json.dumps(info)
        assert httpx.get(f"{s.url}/health", headers=key).json()["model"] == model
    # without auth everything is open, as before
    with serving(ServerConfig(model=model)) as s:
        assert httpx.get(f"{s.url}/info").json()["settings"]["model"] == model
        assert httpx.get(f"{s.url}/health").json()["model"] == model


def test_the_key_comparison_is_constant_time(monkeypatch):
    import hmac

    from bge_rerank_plugins.server import auth as auth_module

    config = ServerConfig(model="m", api_key="s3cret")
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    from fastapi.testclient import TestClient

    app = create_app(config, scorer_factory=lambda: FakeScorer([0.0]))
    with TestClient(app) as client:
        assert client.get("/info", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/info", headers={"Authorization": "Basic s3cret"}).status_code == 401
        assert client.get("/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert seen[-1] == (b"s3cret", b"s3cret")
    assert len(seen) >= 3  # every attempt, whatever its scheme, goes through compare_digest


# ---------------------------------------------------------------------------- body size
def _read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read until the end of one response's body (Content-Length) or until the peer closes."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _chunked(data: bytes, size: int = 10_000) -> bytes:
    out = b""
    for start in range(0, len(data), size):
        part = data[start : start + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out


def test_a_chunked_body_over_the_limit_is_413(server):
    # Valid JSON padded past the 100 kB limit, sent chunked (no Content-Length) and completely:
    # it used to be read whole and scored (200).
    body = b'{"query": "q", "texts": ["a"]' + b" " * 150_000 + b"}"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body) + b"0\r\n\r\n"
        )
        response = _read_response(sock)
    assert _status(response) == 413, response[:300]
    error = json.loads(response.partition(b"\r\n\r\n")[2])
    assert (error["field"], error["error_type"]) == ("body", "payload_too_large")
    assert "max_request_bytes" in error["error"]


def test_a_chunked_body_is_cut_off_as_it_arrives(server):
    # 1 MB offered past a 100 kB limit: the answer comes once the limit is passed, while the
    # client is still sending, instead of after the whole body was read.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b'{"query": "q"' + b" " * 110_000)
        )
        response = _read_response(sock)  # the body was never finished
    assert _status(response) == 413, response[:300]


def test_httpx_streaming_a_large_body_gets_413(server):
    def body():
        yield b'{"query": "q", "texts": ["a"]'
        for _ in range(100):
            yield b" " * 10_000  # 1 MB in all
        yield b"}"

    r = httpx.post(
        f"{server.url}/rerank",
        content=body(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413
    assert r.json()["field"] == "body"


def test_bodies_within_the_limit_still_work_chunked_or_not(server):
    def body():
        yield b'{"query": "q", '
        yield b'"texts": ["a", "b"]}'

    r = httpx.post(
        f"{server.url}/rerank", content=body(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 200
    assert len(r.json()) == 2
    big = httpx.post(
        f"{server.url}/rerank",
        content=b'{"query": "q", "texts": ["a"]' + b" " * 200_000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert (big.status_code, big.json()["field"]) == (413, "body")


# ---------------------------------------------------------------------------- stalled clients
def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``seconds``, and what it sent first."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    received = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, received
        if not chunk:
            return True, received
        received += chunk
    return False, received


def test_a_connection_that_stops_mid_headers_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        closed, received = _closed_within(sock, 5)
    assert closed, "a client that stopped sending its headers still holds the connection"
    assert received == b""


def test_a_connection_that_never_sends_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        closed, _ = _closed_within(sock, 5)
    assert closed


def test_a_body_that_stops_arriving_is_408_and_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 500\r\n\r\n{"query": "q", '
        )
        started = time.monotonic()
        closed, received = _closed_within(sock, 5)
    assert closed, "a client that stopped sending its body still holds the connection"
    assert time.monotonic() - started < 5
    assert _status(received) == 408
    error = json.loads(received.partition(b"\r\n\r\n")[2])
    assert (error["field"], error["error_type"]) == ("body", "request_timeout")


def test_a_chunked_body_that_stops_arriving_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b'\r\n5\r\n{"que'
        )
        closed, received = _closed_within(sock, 5)
    assert closed
    assert _status(received) == 408


def test_a_keep_alive_connection_that_stalls_on_its_next_request_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _status(_read_response(sock)) == 200
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 1")  # and nothing more
        closed, _ = _closed_within(sock, 5)
    assert closed


def test_many_stalled_connections_are_all_released_and_others_served(server):
    socks = []
    try:
        for i in range(30):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if i % 3 == 0:
                sock.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\n")
            elif i % 3 == 1:
                sock.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n{")
            socks.append(sock)
        # meanwhile a normal client is served at once
        started = time.monotonic()
        r = httpx.post(f"{server.url}/rerank", json={"query": "q", "texts": ["a"]}, timeout=10)
        assert r.status_code == 200
        assert time.monotonic() - started < 3
        deadline = time.monotonic() + 6
        open_ = list(socks)
        while open_ and time.monotonic() < deadline:
            still = []
            for sock in open_:
                closed, _ = _closed_within(sock, 0.05)
                if not closed:
                    still.append(sock)
            open_ = still
        assert not open_, f"{len(open_)} of {len(socks)} stalled connections are still held"
    finally:
        for sock in socks:
            sock.close()


def test_timeouts_are_validated():
    for name in ("request_header_timeout_s", "request_body_timeout_s"):
        with pytest.raises(ValueError, match=name):
            ServerConfig(model="m", **{name: 0})
        with pytest.raises(ValueError, match=name):
            ServerConfig(model="m", **{name: float("nan")})
        assert getattr(ServerConfig(model="m", **{name: None}), name) is None


# ---------------------------------------------------------------------------- 4xx, not 500
def _deep_body(depth: int) -> bytes:
    """A /v1/rerank body whose second document nests ``depth`` objects (built as text, so a
    failing assertion never has to print a 400-level dict)."""
    doc = '{"text": "x", "n": ' + '{"n": ' * (depth - 1) + "{}" + "}" * depth
    return ('{"query": "q", "documents": ["a", ' + doc + '], "return_documents": true}').encode()


def test_a_deeply_nested_document_is_422_naming_it(server):
    r = httpx.post(
        f"{server.url}/v1/rerank",
        content=_deep_body(400),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text[:300]
    assert r.json()["field"].startswith("documents[1]")
    assert "nested" in r.json()["error"]
    # nesting of ordinary depth is returned intact
    doc = {"text": "x", "meta": {"tags": ["a", {"b": [1, 2.5, None, True]}]}, "id": 7}
    r = _post_raw(
        f"{server.url}/v1/rerank", {"query": "q", "documents": [doc], "return_documents": True}
    )
    assert r.status_code == 200
    assert r.json()["results"][0]["document"] == doc


def test_a_non_string_text_with_rank_fields_is_422_without_leaking_paths(server):
    body = {
        "query": "q",
        "documents": [{"title": "t", "text": 5}],
        "rank_fields": ["title"],
        "return_documents": True,
    }
    r = httpx.post(f"{server.url}/v1/rerank", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "documents[0].text"
    assert ".py" not in r.text and "File " not in r.text


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/rerank", {"query": "q", "texts": ["fine", "bad \ud800 text"]}, "texts[1]"),
        ("/rerank", {"query": "\udc00", "texts": ["a"]}, "query"),
        ("/v2/rerank", {"query": "q", "documents": ["a", "b\udfff"]}, "documents[1]"),
        ("/v1/rerank", {"query": "q\ud83d", "documents": ["a"]}, "query"),
        (
            "/v1/rerank",
            {"query": "q", "documents": [{"text": "a", "src": "\ud800"}], "return_documents": True},
            "documents[0].src",
        ),
    ],
)
def test_lone_surrogates_are_422_naming_the_field(server, path, body, field):
    r = _post_raw(f"{server.url}{path}", body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert "surrogate" in r.json()["error"]


def test_surrogate_pairs_are_fine(server):
    r = _post_raw(f"{server.url}/rerank", {"query": "q \U0001f600", "texts": ["a \U0001f43c"]})
    assert r.status_code == 200


def test_nan_in_a_returned_document_is_422_not_null(server):
    raw = b'{"query": "q", "documents": [{"text": "a", "w": NaN}], "return_documents": true}'
    r = httpx.post(
        f"{server.url}/v1/rerank", content=raw, headers={"content-type": "application/json"}
    )
    assert (r.status_code, r.json()["field"]) == (422, "documents[0].w")


def test_an_unexpected_error_is_500_without_internals(tiny_bert):
    class Broken(FakeScorer):
        @property
        def device(self):
            raise RuntimeError("internal detail /srv/secret/path.py")

    with serving(ServerConfig(model=str(tiny_bert)), scorer_factory=lambda: Broken([0.0])) as s:
        r = httpx.get(f"{s.url}/info")
    assert r.status_code == 500
    assert r.json()["error_type"] == "server_error"
    assert "/srv/secret" not in r.text and "RuntimeError" in r.json()["error"]


# ---------------------------------------------------------------------------- start-up
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"batch_wait_fraction": 2}, "batch_wait_fraction"),
        ({"batch_wait_fraction": -0.5}, "batch_wait_fraction"),
        ({"dtype": "float8"}, "dtype"),
        ({"device": "gpu"}, "device"),
        ({"max_length": 4}, "max_length"),
        ({"batch_size": 0}, "batch_size"),
        ({"token_budget": -1}, "token_budget"),
        ({"max_batch_wait_ms": float("inf")}, "max_batch_wait_ms"),
        ({"drain_timeout_s": -1}, "drain_timeout_s"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_options_fail_in_the_config(options, match):
    with pytest.raises((TypeError, ValueError), match=match):
        ServerConfig(**{"model": "m", **options})


@pytest.mark.parametrize(
    ("flags", "word"),
    [
        (["--batch-wait-fraction", "2"], "batch_wait_fraction"),
        (["--dtype", "float8"], "dtype"),
        (["--request-body-timeout", "-1"], "request_body_timeout_s"),
    ],
)
def test_serve_cli_refuses_bad_options_before_starting(monkeypatch, capsys, flags, word):
    from bge_rerank_plugins import cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr("bge_rerank_plugins.server.run_server", must_not_run)
    monkeypatch.delenv("BGE_RERANK_API_KEY", raising=False)
    assert cli.main(["serve", "--model", "m", *flags]) != 0
    err = capsys.readouterr().err
    assert word in err
    assert len(err.strip().splitlines()) == 1


def test_run_server_stops_and_raises_when_the_model_fails_to_load(tmp_path):
    from bge_rerank_plugins.server import ModelLoadError, run_server

    missing = tmp_path / "no-such-model"
    outcome: list[BaseException | None] = []

    def serve() -> None:
        try:
            run_server(
                ServerConfig(model=str(missing)), port=free_loopback_port(), log_level="warning"
            )
            outcome.append(None)
        except BaseException as error:  # handed to the assertions below
            outcome.append(error)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "run_server kept serving a model that failed to load"
    error = outcome[0]
    assert isinstance(error, ModelLoadError), error
    assert "failed to load" in str(error) and str(missing) in str(error)
    assert error.__cause__ is not None


def test_serve_cli_exits_non_zero_at_once_on_a_missing_model(tmp_path):
    missing = tmp_path / "no-such-model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("BGE_RERANK_API_KEY", None)
    command = [
        sys.executable,
        "-m",
        "bge_rerank_plugins.cli",
        "serve",
        "--model",
        str(missing),
        "--port",
        str(free_loopback_port()),
        "--log-level",
        "warning",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"bge-rerank serve kept running with a missing model: {expired.stderr!r}")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if str(missing) in line]
    assert len(lines) == 1, done.stderr
    assert "failed to load" in lines[0]
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------- what already works
async def _clients(url: str, clients: int, requests: int) -> list[tuple[str, dict]]:
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(c: int) -> list[tuple[str, dict]]:
            out = []
            for r in range(requests):
                query = f"query {c} {r}"
                response = await client.post(
                    f"{url}/rerank", json={"query": query, "texts": TEXTS[:2]}
                )
                assert response.status_code == 200, response.text
                out.append((query, {it["index"]: it["score"] for it in response.json()}))
            return out

        results = await asyncio.gather(*(one(c) for c in range(clients)))
    return [item for per_client in results for item in per_client]


def test_32_concurrent_clients_of_20_requests_all_get_their_own_scores(tiny_bert):
    with serving(ServerConfig(model=str(tiny_bert))) as s:
        results = asyncio.run(_clients(s.url, 32, 20))
    assert len(results) == 640
    scorer = CrossEncoderScorer(tiny_bert)
    pairs = [(query, text) for query, _ in results for text in TEXTS[:2]]
    want = scorer.score_pairs(pairs)
    for n, (_, got) in enumerate(results):
        assert [got[0], got[1]] == pytest.approx(want[2 * n : 2 * n + 2], rel=1e-5, abs=1e-6)
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in got.values())


def test_returned_documents_keep_every_field_as_sent(server):
    docs = [
        {"text": "bamboo", "id": "d0", "meta": {"year": 2024, "tags": ["a", "b"], "x": None}},
        "plain string",
        {"text": "other", "score": 0.25, "flag": False},
    ]
    sent = json.loads(json.dumps(docs))
    r = httpx.post(
        f"{server.url}/v1/rerank",
        json={"query": "q", "documents": docs, "return_documents": True},
    )
    assert r.status_code == 200
    back = {item["index"]: item["document"] for item in r.json()["results"]}
    assert back[0] == docs[0] and back[2] == docs[2]
    assert back[1] == {"text": "plain string"}
    assert docs == sent


def test_serve_cli_passes_the_limits_and_timeouts(monkeypatch):
    from bge_rerank_plugins import cli

    seen = {}
    monkeypatch.setattr(
        "bge_rerank_plugins.server.run_server",
        lambda config, **kwargs: seen.update(config=config),
    )
    monkeypatch.delenv("BGE_RERANK_API_KEY", raising=False)
    argv = ["serve", "--model", "m", "--max-request-bytes", "1000"]
    argv += ["--request-header-timeout", "0", "--request-body-timeout", "5"]
    assert cli.main(argv) == 0
    config = seen["config"]
    assert config.max_request_bytes == 1000
    assert config.request_header_timeout_s is None  # 0: no bound
    assert config.request_body_timeout_s == 5.0
    assert config.api_key is None
