"""The server split by job (issue 20): config, errors, service, routers, middleware, protocol.

Behaviour is covered by test_server.py and test_server_robustness.py, unchanged; these tests pin
what the split itself promises: module-level handlers that work on any app holding a service,
one error-kind-to-status table, scorer options checked by ScorerConfig, no sigmoid or
best-first copy in the server, and the old import paths.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import math
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="the serve extra is not installed")

from fastapi import FastAPI
from fastapi.testclient import TestClient

from bge_rerank_plugins.config import ScorerConfig
from bge_rerank_plugins.server import ServerConfig, create_app
from bge_rerank_plugins.server.errors import (
    EXCEPTION_HANDLERS,
    STATUS,
    ApiError,
    ErrorKind,
)
from bge_rerank_plugins.server.routes import ROUTERS, cohere, ops, tei, vllm
from bge_rerank_plugins.server.service import ScorerService

SERVER = Path(__file__).resolve().parent.parent / "src" / "bge_rerank_plugins" / "server"


class FakeScorer:
    """Fixed raw scores, one per text in order."""

    device = "cpu"
    model_max_length = 512

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def score_pairs(self, pairs, normalize=None):
        return [self.scores[i % len(self.scores)] for i in range(len(pairs))]


# ---------------------------------------------------------------------------- routes
def test_handlers_are_module_level_functions_without_closures():
    handlers = {
        ("/rerank", "POST"): tei.rerank_tei,
        ("/v1/rerank", "POST"): cohere.rerank_v1,
        ("/v2/rerank", "POST"): cohere.rerank_v2,
        ("/score", "POST"): vllm.score,
        ("/v1/score", "POST"): vllm.score,
        ("/v1/models", "GET"): vllm.list_models,
        ("/health", "GET"): ops.health,
        ("/metrics", "GET"): ops.metrics,
        ("/info", "GET"): ops.info,
    }
    found = {}
    for router in ROUTERS:
        for route in router.routes:
            for method in route.methods:
                found[(route.path, method)] = route.endpoint
    assert found == handlers
    for handler in handlers.values():
        assert handler.__closure__ is None, f"{handler.__name__} closes over app state"
        assert "<locals>" not in handler.__qualname__
    app = create_app(ServerConfig(model="m"), scorer_factory=lambda: FakeScorer([0.0]))
    paths = ["/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score", "/v1/models"]
    paths += ["/health", "/metrics", "/info"]
    assert list(app.openapi()["paths"]) == paths


def test_a_router_works_on_any_app_that_holds_a_service():
    """The handlers read the service from app.state, so a router mounts on its own."""
    app = FastAPI()
    service = ScorerService(ServerConfig(model="m"), scorer_factory=lambda: FakeScorer([0.0, 2.0]))
    service.load()
    app.state.service = service
    for exception, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exception, handler)
    app.include_router(tei.router)
    with TestClient(app) as client:
        r = client.post("/rerank", json={"query": "q", "texts": ["a", "b"], "raw_scores": True})
        assert r.status_code == 200
        assert r.json() == [{"index": 1, "score": 2.0}, {"index": 0, "score": 0.0}]
        r = client.post("/rerank", json={"query": "q", "texts": ["a"] * 1001})
        assert (r.status_code, r.json()["error_type"]) == (413, "payload_too_large")
        assert client.get("/health").status_code == 404  # only the TEI router is mounted
    service.batcher.close()


def test_the_sigmoid_and_the_order_are_the_scorers():
    from bge_rerank_plugins import scorer

    assert scorer.sigmoid is scorer._sigmoid  # the old private name still works
    assert scorer.sigmoid(0.0) == 0.5 and scorer.sigmoid(-800.0) == 0.0
    for path in SERVER.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "def _sigmoid" not in source and "def sigmoid" not in source, path
        assert "key=lambda i: (-scores[i], i)" not in source, path  # fields.best_first
    app = create_app(ServerConfig(model="m"), scorer_factory=lambda: FakeScorer([-1.0, 3.0, 3.0]))
    with TestClient(app) as client:
        body = {"query": "q", "documents": ["a", "b", "c"]}
        results = client.post("/v2/rerank", json=body).json()["results"]
    assert [item["index"] for item in results] == [1, 2, 0]  # ties keep input order
    assert results[2]["relevance_score"] == pytest.approx(1 / (1 + math.exp(1.0)))


# ---------------------------------------------------------------------------- errors
def test_every_error_kind_has_one_status():
    assert set(STATUS) == set(ErrorKind)
    assert STATUS[ErrorKind.PAYLOAD_TOO_LARGE] == 413
    assert STATUS[ErrorKind.UNAUTHORIZED] == 401
    assert STATUS[ErrorKind.REQUEST_TIMEOUT] == 408
    assert STATUS[ErrorKind.UNAVAILABLE] == 503
    error = ApiError("non_finite_score", "NaN", field="texts")
    assert (error.kind, error.status, error.field) == (ErrorKind.NON_FINITE_SCORE, 500, "texts")
    with pytest.raises(ValueError, match="not_a_kind"):
        ApiError("not_a_kind", "x")
    with pytest.raises(TypeError):
        STATUS[ErrorKind.INVALID] = 400  # the table is read-only


# ---------------------------------------------------------------------------- config
def test_the_scorer_options_are_a_scorer_config():
    config = ServerConfig(model="m", dtype="bfloat16", max_length="auto", backend="torch-int8")
    assert config.scorer == ScorerConfig(
        model="m", dtype="bfloat16", max_length="auto", backend="torch-int8", normalize=False
    )
    # the public settings keep their flat shape
    assert config.public()["dtype"] == "bfloat16" and "scorer" not in config.public()
    # the messages are ScorerConfig's own
    for options in ({"backend": "int8"}, {"max_length": 4}, {"batch_size": 0}, {"dtype": "x"}):
        with pytest.raises(ValueError) as from_scorer:
            ScorerConfig(model="m", **options)
        with pytest.raises(ValueError) as from_server:
            ServerConfig(model="m", **options)
        assert str(from_server.value) == str(from_scorer.value)
    # normalised once, so /info stays JSON
    assert ServerConfig(model=Path("some/dir")).model == str(Path("some/dir"))
    assert ServerConfig(model="m", dtype=None).dtype == "auto"
    with pytest.raises(TypeError, match="model"):
        ServerConfig(model="   ")


def test_every_scorer_option_is_exposed_or_excluded():
    exposed = {f.name for f in dataclasses.fields(ServerConfig)}
    excluded = set(ServerConfig.SCORER_CONFIG_EXCLUDED)
    scorer_fields = {f.name for f in dataclasses.fields(ScorerConfig)}
    assert scorer_fields - exposed == excluded
    assert not excluded & exposed


def test_from_scorer_config():
    scorer = ScorerConfig(model="m", batch_size=4, backend="torch-int8")
    config = ServerConfig.from_scorer_config(scorer, max_documents=10, api_key="k")
    assert (config.model, config.batch_size, config.backend) == ("m", 4, "torch-int8")
    assert (config.max_documents, config.api_key) == (10, "k")
    assert config.scorer == dataclasses.replace(scorer, normalize=False)
    with pytest.raises(ValueError, match="cache_size"):
        ServerConfig.from_scorer_config(ScorerConfig(model="m", cache_size=10))
    with pytest.raises(ValueError, match="batch_size"):
        ServerConfig.from_scorer_config(scorer, batch_size=8)
    with pytest.raises(TypeError, match="ScorerConfig"):
        ServerConfig.from_scorer_config({"model": "m"})


# ---------------------------------------------------------------------------- layout
def test_old_import_paths_still_work():
    from bge_rerank_plugins import server
    from bge_rerank_plugins.server import app, checks, config, errors

    assert app.ServerConfig is config.ServerConfig is server.ServerConfig
    assert app.ApiError is errors.ApiError is server.ApiError
    assert app.ModelLoadError is errors.ModelLoadError is server.ModelLoadError
    assert app.API_KEY_ENV == server.API_KEY_ENV == "BGE_RERANK_API_KEY"
    assert app.MAX_DOCUMENT_DEPTH == checks.MAX_DOCUMENT_DEPTH == 64
    for name in server.__all__:
        assert getattr(server, name) is not None


def test_app_py_only_assembles():
    """create_app is assembly: no route, handler or check is defined inside it."""
    source = inspect.getsource(create_app)
    assert "def " not in source.split('"""')[-1]
    assert len((SERVER / "app.py").read_text(encoding="utf-8").splitlines()) <= 220


@pytest.mark.parametrize(
    "name",
    [f"bge_rerank_plugins.server.{name}" for name in ("errors", "checks", "config")],
)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
