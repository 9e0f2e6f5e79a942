"""``ScorerConfig``: one inference option set, built by the scorer, the adapters, the CLI and Ray.

The drift tests fail when a field is added to ScorerConfig and a consumer neither exposes it
nor lists it in its explicit exclusions (each consumer module says why it leaves a field out).
"""

from __future__ import annotations

import argparse
import dataclasses
import doctest
import importlib
import inspect
import pickle
from pathlib import Path

import pytest

from bge_rerank_plugins.config import (
    DEFAULT_MODEL,
    SCORER_CONFIG_FIELDS,
    ScorerConfig,
    dtype_from_use_fp16,
)
from bge_rerank_plugins.fields import PassageTemplate
from bge_rerank_plugins.scorer import CrossEncoderScorer

QUERY = "what do giant pandas eat?"
PASSAGES = ["The giant panda eats bamboo.", "Pandas is a Python library.", "Beijing."]


# ------------------------------------------------------------------ the config itself
def test_fields_and_defaults_are_the_scorers_keyword_arguments() -> None:
    """The scorer's signature is kept; every config field is one of its arguments, same default."""
    params = inspect.signature(CrossEncoderScorer.__init__).parameters
    defaults = {f.name: f.default for f in dataclasses.fields(ScorerConfig)}
    for name, default in defaults.items():
        assert name in params, name
        assert params[name].default == default, name
    # What the scorer takes besides the config: an alias, a per-process display choice and
    # the runner seam (a test and instrumentation hook, never a deployment option).
    assert set(params) - set(defaults) == {"self", "use_fp16", "show_progress_bar", "runner"}
    assert SCORER_CONFIG_FIELDS == tuple(defaults)


def test_public_import_paths() -> None:
    import bge_rerank_plugins
    from bge_rerank_plugins.scorer import DEFAULT_MODEL as from_scorer

    assert from_scorer == DEFAULT_MODEL == bge_rerank_plugins.DEFAULT_MODEL
    assert bge_rerank_plugins.ScorerConfig is ScorerConfig
    assert "ScorerConfig" in bge_rerank_plugins.__all__


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, r"batch_size must be a positive int or None, got 0"),
        ({"batch_size": True}, ValueError, r"batch_size must be a positive int or None, got True"),
        ({"token_budget": True}, ValueError, r"token_budget must be a positive int or None"),
        ({"max_length": 4}, ValueError, r"max_length must be an int >= 8, 'auto' or None"),
        ({"max_length": "long"}, ValueError, r"max_length must be an int >= 8"),
        ({"query_max_length": True}, ValueError, r"query_max_length must be a positive int"),
        ({"cache_size": -1}, ValueError, r"cache_size must be an int >= 0"),
        ({"cache_size": True}, ValueError, r"cache_size must be an int >= 0"),
        ({"normalize": "no"}, TypeError, r"normalize must be True .* or False .* got str 'no'"),
        ({"backend": "int8"}, ValueError, r"backend must be one of \('torch'"),
        ({"dtype": "int4"}, ValueError, r"dtype must be one of"),
        ({"template": 3}, TypeError, r"template must be a format string"),
        ({"template": "{}"}, ValueError, r"positional fields"),
        ({"model": 3}, TypeError, r"model must be a Hub id or a local directory path"),
        ({"model": ""}, TypeError, r"model must be a Hub id"),
        ({"device": 0}, TypeError, r"device must be a string such as 'cpu'"),
        ({"revision": 1}, TypeError, r"revision must be a Hub branch, tag or commit"),
        ({"trust_remote_code": "False"}, TypeError, r"trust_remote_code must be True or False"),
    ],
)
def test_bad_values_are_refused_by_name(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ScorerConfig(**kwargs)


def test_the_scorer_checks_through_the_config_before_loading_anything() -> None:
    # A path that does not exist would be ModelNotFoundError; the option is refused first.
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        CrossEncoderScorer("./no/such/model", batch_size=0)
    with pytest.raises(TypeError, match="trust_remote_code must be True or False"):
        CrossEncoderScorer("./no/such/model", trust_remote_code="yes")  # type: ignore[arg-type]


def test_values_are_normalised_once(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    config = ScorerConfig(
        model=tmp_path,
        dtype=torch.bfloat16,
        device=torch.device("cpu"),
        template=["title", "text"],
    )
    assert config.model == str(tmp_path)
    assert config.dtype == "bfloat16" and config.device == "cpu"
    assert config.template == PassageTemplate(("title", "text"))
    assert ScorerConfig(dtype=None).dtype == "auto"
    # Frozen, hashable, comparable, picklable (Ray ships it to its actors).
    assert hash(config) == hash(dataclasses.replace(config))
    assert pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.backend = "onnx"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ScorerConfig("BAAI/bge-reranker-base")  # type: ignore[misc]  # keyword-only
    # replace() runs the checks again.
    with pytest.raises(ValueError, match="backend"):
        dataclasses.replace(config, backend="int8")


def test_backend_names_come_from_the_one_backend_list(monkeypatch) -> None:
    import bge_rerank_plugins.runtime.backends as backends

    with pytest.raises(ValueError, match="backend must be one of"):
        ScorerConfig(backend="my-backend")
    monkeypatch.setattr(backends, "BACKENDS", (*backends.BACKENDS, "my-backend"))
    assert ScorerConfig(backend="my-backend").backend == "my-backend"


@pytest.mark.parametrize(
    ("dtype", "use_fp16", "want"),
    [
        ("auto", None, "auto"),
        ("auto", True, "float16"),
        ("float16", True, "float16"),
        (None, True, "float16"),
        ("auto", False, "float32"),
        ("bfloat16", False, "bfloat16"),
        ("bfloat16", None, "bfloat16"),
    ],
)
def test_use_fp16_is_an_alias_for_dtype(dtype, use_fp16, want) -> None:
    assert dtype_from_use_fp16(dtype, use_fp16) == want


def test_use_fp16_conflicts_and_non_bools_are_refused() -> None:
    with pytest.raises(ValueError, match="use_fp16=True conflicts with dtype='bfloat16'"):
        dtype_from_use_fp16("bfloat16", True)
    with pytest.raises(TypeError, match="use_fp16 must be True, False or None"):
        dtype_from_use_fp16("auto", "yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "module",
    [
        "bge_rerank_plugins.config",
        "bge_rerank_plugins.cli.options",
        "bge_rerank_plugins.cli.evaluate",
        "bge_rerank_plugins.adapter_options",
    ],
)
def test_docstring_examples(module: str) -> None:
    if module.endswith("adapter_options"):
        pytest.importorskip("pydantic")
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ the scorer
def test_scorer_exposes_its_config_and_builds_from_one(tiny_bert: Path) -> None:
    scorer = CrossEncoderScorer(tiny_bert, use_fp16=False, batch_size=2, cache_size=4)
    config = scorer.config
    assert isinstance(config, ScorerConfig)
    assert (config.model, config.dtype, config.batch_size, config.cache_size) == (
        str(tiny_bert),
        "float32",
        2,
        4,
    )
    again = CrossEncoderScorer.from_config(config, show_progress_bar=False)
    assert again.config == config and again.show_progress_bar is False
    assert again.batch_size == 2 and again.cache is not None
    assert again.score(QUERY, PASSAGES) == scorer.score(QUERY, PASSAGES)
    raw = CrossEncoderScorer.from_config(dataclasses.replace(config, normalize=False))
    assert raw.normalize is False
    with pytest.raises(TypeError, match="config must be a ScorerConfig"):
        CrossEncoderScorer.from_config({"model": str(tiny_bert)})  # type: ignore[arg-type]


# ------------------------------------------------------------------ drift: every consumer
def _undeclared(fields: tuple[str, ...], exposed: set[str], excluded: tuple[str, ...]) -> set:
    """ScorerConfig fields a consumer neither exposes nor excludes."""
    return set(fields) - exposed - set(excluded)


def _check_consumer(name: str, exposed: set[str], excluded: tuple[str, ...]) -> None:
    missing = _undeclared(SCORER_CONFIG_FIELDS, exposed, excluded)
    assert not missing, (
        f"{name} neither exposes nor excludes the ScorerConfig fields {sorted(missing)}: add "
        "an option for each, or list it (with a reason) in that consumer's "
        "SCORER_CONFIG_EXCLUDED."
    )
    assert set(excluded) <= set(SCORER_CONFIG_FIELDS), f"{name}: stale exclusions"
    assert not set(excluded) & exposed, f"{name}: a field is both exposed and excluded"
    # A new ScorerConfig field that nobody declares is caught.
    assert _undeclared((*SCORER_CONFIG_FIELDS, "new_option"), exposed, excluded) == {"new_option"}


def _adapter_classes() -> list[type]:
    classes = []
    try:
        from bge_rerank_plugins.llama_index import BGEReranker

        classes.append(BGEReranker)
    except ImportError:  # pragma: no cover - depends on the installed extras
        pass
    try:
        from bge_rerank_plugins.langchain import (
            BGECrossEncoder,
            BGERerankCompressor,
            BGERerankRetriever,
        )

        classes += [BGERerankCompressor, BGERerankRetriever, BGECrossEncoder]
    except ImportError:  # pragma: no cover
        pass
    return classes


def test_adapters_expose_every_scorer_option() -> None:
    classes = _adapter_classes()
    if not classes:
        pytest.skip("neither llama-index-core nor langchain-core is installed")
    for cls in classes:
        _check_consumer(cls.__name__, set(cls.model_fields), cls.SCORER_CONFIG_EXCLUDED)


def _subparser(command: str) -> argparse.ArgumentParser:
    from bge_rerank_plugins.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_cli_commands_expose_every_scorer_option(command: str) -> None:
    from bge_rerank_plugins.cli import SCORER_CONFIG_EXCLUDED

    dests = {action.dest for action in _subparser(command)._actions}
    _check_consumer(f"bge-rerank {command}", dests, SCORER_CONFIG_EXCLUDED[command])


def test_ray_exposes_every_scorer_option() -> None:
    from bge_rerank_plugins import ray_scoring

    for function in (ray_scoring.score_ray_dataset, ray_scoring.PairScorer.__init__):
        params = inspect.signature(function).parameters
        assert set(ray_scoring.OWN_ARGUMENTS.values()) | {"scorer_options", "config"} <= set(params)
    exposed = set(ray_scoring.OWN_ARGUMENTS) | set(ray_scoring.SCORER_OPTIONS)
    _check_consumer("score_ray_dataset", exposed, ray_scoring.SCORER_CONFIG_EXCLUDED)


def test_server_exposes_every_scorer_option() -> None:
    # SERVER: the spot for ServerConfig. It does not build a ScorerConfig yet (a later step of
    # issue 20); once it declares SCORER_CONFIG_EXCLUDED this test checks it like the others.
    pytest.importorskip("fastapi")
    from bge_rerank_plugins.server import ServerConfig

    if not hasattr(ServerConfig, "SCORER_CONFIG_EXCLUDED"):
        pytest.skip("ServerConfig does not build a ScorerConfig yet (issue 20, server step)")
    exposed = {f.name for f in dataclasses.fields(ServerConfig)}
    _check_consumer("ServerConfig", exposed, ServerConfig.SCORER_CONFIG_EXCLUDED)


# ------------------------------------------------------------------ adapters: the new fields
@pytest.mark.parametrize("adapter", ["BGEReranker", "BGERerankCompressor", "BGECrossEncoder"])
def test_adapters_accept_dtype_and_it_reaches_the_scorer(adapter: str, tiny_bert: Path) -> None:
    torch = pytest.importorskip("torch")
    cls = {c.__name__: c for c in _adapter_classes()}.get(adapter)
    if cls is None:
        pytest.skip(f"{adapter}'s framework is not installed")
    options = cls(model=tiny_bert, device="cpu", dtype="bfloat16")
    assert options.scorer_config().dtype == "bfloat16"
    scorer = options.get_scorer()
    assert scorer.dtype == torch.bfloat16 and scorer.config.dtype == "bfloat16"
    # Serialized settings keep it.
    assert options.model_dump()["dtype"] == "bfloat16"


def test_adapters_pass_every_loading_option_to_the_scorer(tiny_bert: Path) -> None:
    pytest.importorskip("langchain_core")
    from pydantic import ValidationError

    from bge_rerank_plugins.langchain import BGERerankCompressor

    compressor = BGERerankCompressor(
        model=tiny_bert,
        device="cpu",
        use_fp16=False,
        max_length=64,
        query_max_length=8,
        batch_size=2,
        token_budget=96,
        cache_size=16,
        backend="torch-int8",
        revision="main",
        normalize=False,
        template="{title}\n{text}",
    )
    config = compressor.scorer_config()
    assert dataclasses.asdict(config) == dataclasses.asdict(
        ScorerConfig(
            model=str(tiny_bert),
            device="cpu",
            dtype="float32",
            max_length=64,
            query_max_length=8,
            batch_size=2,
            token_budget=96,
            cache_size=16,
            backend="torch-int8",
            revision="main",
            normalize=False,
            # The adapter renders its template itself, over the text and metadata.
            template=None,
        )
    )
    # The scorer's checks, at construction (nothing is loaded yet).
    with pytest.raises(ValidationError, match="dtype must be one of"):
        BGERerankCompressor(dtype="int4")
    with pytest.raises(ValidationError, match="use_fp16=True conflicts with dtype"):
        BGERerankCompressor(use_fp16=True, dtype="bfloat16")
    for field in ("query_max_length", "token_budget", "cache_size"):
        with pytest.raises(ValidationError, match="not a bool"):
            BGERerankCompressor(**{field: True})
    # With a shared scorer the new loading options are the scorer's too.
    shared = CrossEncoderScorer(tiny_bert, dtype="float32")
    with pytest.raises(ValidationError, match="dtype: these loading options belong"):
        BGERerankCompressor(scorer=shared, dtype="bfloat16")
    assert BGERerankCompressor(scorer=shared).scorer_config() is shared.config


# ------------------------------------------------------------------ Ray: backend
def test_ray_actors_get_the_backend(tiny_bert: Path) -> None:
    pytest.importorskip("numpy")
    import numpy as np

    from bge_rerank_plugins.ray_scoring import PairScorer

    want = CrossEncoderScorer(tiny_bert, backend="torch-int8").score_pairs(
        [(QUERY, p) for p in PASSAGES]
    )
    batch = {"query": np.array([QUERY] * 3), "passage": np.array(PASSAGES)}
    by_options = PairScorer(tiny_bert, scorer_options={"backend": "torch-int8"})
    by_config = PairScorer(config=ScorerConfig(model=str(tiny_bert), backend="torch-int8"))
    for fn in (by_options, by_config):
        assert fn.scorer.backend == "torch-int8"
        assert fn(batch)["score"].tolist() == pytest.approx(want, rel=1e-5, abs=1e-6)
    # The old call style keeps its defaults: 32 pairs per pass, sigmoid scores.
    assert PairScorer(tiny_bert).scorer.config == ScorerConfig(model=str(tiny_bert), batch_size=32)


def test_ray_checks_the_options_on_the_driver(tiny_bert: Path) -> None:
    pytest.importorskip("ray.data")
    from bge_rerank_plugins.ray_scoring import score_ray_dataset

    not_a_dataset = object()  # the checks run before the dataset is touched
    with pytest.raises(ValueError, match="backend must be one of"):
        score_ray_dataset(not_a_dataset, model=tiny_bert, scorer_options={"backend": "int8"})
    with pytest.raises(TypeError, match="scorer_options has unknown keys"):
        score_ray_dataset(not_a_dataset, model=tiny_bert, scorer_options={"max_lenght": 64})
    config = ScorerConfig(model=str(tiny_bert))
    with pytest.raises(ValueError, match="model, scorer_options: config= already says"):
        score_ray_dataset(
            not_a_dataset, model=tiny_bert, config=config, scorer_options={"dtype": "float32"}
        )
    with pytest.raises(TypeError, match=r"config must be a bge_rerank_plugins\.ScorerConfig"):
        score_ray_dataset(not_a_dataset, config={"model": str(tiny_bert)})


@pytest.mark.ray
def test_ray_dataset_scores_with_the_configured_backend(tiny_bert: Path) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from bge_rerank_plugins.ray_scoring import score_ray_dataset

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        rows = [{"id": i, "query": QUERY, "passage": p} for i, p in enumerate(PASSAGES)]
        config = ScorerConfig(model=str(tiny_bert), backend="torch-int8", normalize=False)
        scored = score_ray_dataset(ray.data.from_items(rows), config=config)
        got = [r["score"] for r in sorted(scored.take_all(), key=lambda r: r["id"])]
    finally:
        ray.shutdown()
    want = CrossEncoderScorer.from_config(config).score(QUERY, PASSAGES)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------ CLI
def test_cli_options_build_the_config() -> None:
    from bge_rerank_plugins.cli import build_parser, scorer_config_from_args

    options = ["--dtype", "bfloat16", "--batch-size", "4", "--token-budget", "256"]
    options += ["--revision", "v1", "--raw", "--trust-remote-code"]
    args = build_parser().parse_args(["score", "--query", "q", "p", *options])
    config = scorer_config_from_args(args)
    assert (config.model, config.dtype, config.batch_size, config.token_budget) == (
        DEFAULT_MODEL,
        "bfloat16",
        4,
        256,
    )
    assert (config.revision, config.normalize, config.trust_remote_code) == ("v1", False, True)
    plain = scorer_config_from_args(build_parser().parse_args(["score", "--query", "q", "p"]))
    assert plain == ScorerConfig()
    args = build_parser().parse_args(
        ["evaluate", "--data", "d", "--backend", "onnx", "--template", "{title}\\n{text}"]
    )
    assert args.backend == "onnx" and args.template == "{title}\n{text}"
    assert scorer_config_from_args(args, model="m").template == PassageTemplate("{title}\n{text}")


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["evaluate", "--data", "d", "--backend", "int8"], "--backend"),
        (["evaluate", "--data", "d", "--template", "{}"], "--template"),
        (["score", "--query", "q", "p", "--dtype", "half"], "--dtype"),
        (["score", "--query", "q", "p", "--query-max-length", "0"], "--query-max-length"),
    ],
)
def test_bad_scorer_options_name_the_option(argv: list[str], option: str, capsys) -> None:
    from bge_rerank_plugins.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err.splitlines()[-1]


def test_evaluate_backend_reaches_the_scorer(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    import bge_rerank_plugins.evaluation as evaluation
    from bge_rerank_plugins.beir import write_beir
    from bge_rerank_plugins.cli import main

    data = write_beir(
        tmp_path / "data",
        corpus={"d1": {"title": "Beijing", "text": "The capital."}, "d2": {"text": "Tax."}},
        queries={"q1": "capital of China"},
        qrels={"test": {"q1": {"d1": 1}}},
    )
    seen = {}

    class _Comparison:
        def to_markdown(self) -> str:
            return ""

    def spy(models, *args, **kwargs):
        seen.update(models)
        return _Comparison()

    monkeypatch.setattr(evaluation, "evaluate_models", spy)
    argv = ["evaluate", "--data", str(data), "--split", "test", "--model", f"tiny={tiny_bert}"]
    assert main([*argv, "--backend", "torch-int8", "--batch-size", "3"]) == 0
    scorer = seen["tiny"]
    assert scorer.backend == "torch-int8" and scorer.config.backend == "torch-int8"
    assert scorer.batch_size == 3 and scorer.config.model == str(tiny_bert)
