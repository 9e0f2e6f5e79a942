"""``cutoff_layer``: the layer a layer-wise reranker (``bge-layerwise``) reads, as a scorer option.

Checked against FlagEmbedding's ``LayerWiseFlagLLMReranker(...).compute_score(...,
cutoff_layers=[n])`` on the tiny random MiniCPM of ``tests/test_family_layerwise.py`` (its
fixtures and reference workarounds are reused), and through every way of building a scorer: the
config's checks, the score cache, the adapters, the CLI and the refusal by the other families.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from bge_rerank_plugins import CrossEncoderScorer, ScorerConfig

pytest.importorskip("FlagEmbedding")

# The layer-wise test module's tiny model, its FlagEmbedding reference and helpers; pytest puts
# tests/ on sys.path (no __init__.py), so its fixtures are imported here by name.
from test_family_layerwise import (
    LAYERS,
    PASSAGES,
    QUERY,
    START,
    _flag,
    _pairs,
    _scorer,
    layerwise,  # noqa: F401  (a fixture)
    reference,  # noqa: F401  (a fixture)
)


def test_cutoff_layer_equals_flagembeddings_cutoff_layers(
    layerwise: Path,  # noqa: F811
    reference: Any,  # noqa: F811
) -> None:
    pairs = _pairs()
    scorer = _scorer(layerwise, cutoff_layer=START, batch_size=3)
    assert scorer.config.cutoff_layer == START and scorer.runner.cutoff_layer == START
    ours = scorer.score_pairs(pairs)
    theirs = _flag(reference, pairs, cutoff_layers=[START])  # one layer: one flat list
    assert ours == pytest.approx(theirs, abs=1e-5)
    top = _scorer(layerwise, batch_size=3)
    assert top.config.cutoff_layer is None and top.runner.cutoff_layer == LAYERS
    assert max(abs(a - b) for a, b in zip(ours, top.score_pairs(pairs))) > 1e-3
    # The top layer named explicitly is the default.
    explicit = _scorer(layerwise, cutoff_layer=LAYERS, batch_size=3).score_pairs(pairs)
    assert explicit == top.score_pairs(pairs)


def test_a_layer_without_a_head_is_refused_by_the_runner(layerwise: Path) -> None:  # noqa: F811
    for wrong in (START - 1, LAYERS + 1):
        with pytest.raises(ValueError, match=f"cutoff_layer must be one layer from {START} to"):
            _scorer(layerwise, cutoff_layer=wrong)


def test_the_cache_never_mixes_layers(layerwise: Path) -> None:  # noqa: F811
    pairs = _pairs()[:4]
    want = {n: _scorer(layerwise, cutoff_layer=n).score_pairs(pairs) for n in (START, LAYERS)}
    scorer = _scorer(layerwise, cutoff_layer=START, cache_size=64)
    assert scorer.score_pairs(pairs) == want[START]
    # The layer can still be moved on the runner: the key follows the layer really read.
    scorer.runner.cutoff_layer = LAYERS
    assert scorer.score_pairs(pairs) == want[LAYERS]
    # A cache shared by two scorers on the same model, reading different layers.
    other = _scorer(layerwise, cutoff_layer=LAYERS - 1, cache_size=64)
    other.cache = scorer.cache
    third = _scorer(layerwise, cutoff_layer=LAYERS - 1).score_pairs(pairs)
    assert other.score_pairs(pairs) == third
    assert len(scorer.cache) == 3 * len(pairs)
    scorer.runner.cutoff_layer = START
    hits = scorer.cache.hits
    assert scorer.score_pairs(pairs) == want[START] and scorer.cache.hits == hits + len(pairs)


# ------------------------------------------------------------------ the option everywhere
@pytest.mark.parametrize(
    ("value", "match"),
    [
        (0, r"cutoff_layer must be an int >= 1 .* got 0"),
        (-3, r"cutoff_layer must be an int >= 1 .* got -3"),
        (True, r"cutoff_layer must be an int >= 1 .* got True"),
        ("28", r"cutoff_layer must be an int >= 1 .* got '28'"),
        (2.0, r"cutoff_layer must be an int >= 1 .* got 2.0"),
    ],
)
def test_the_config_checks_the_value(value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ScorerConfig(cutoff_layer=value)
    with pytest.raises(ValueError, match=match):
        CrossEncoderScorer("./no/such/model", cutoff_layer=value)


def test_other_families_refuse_it_by_name(tiny_bert: Path) -> None:
    assert ScorerConfig(cutoff_layer=28, family="bge-layerwise").cutoff_layer == 28
    assert ScorerConfig(cutoff_layer=28).family == "auto"  # known only once the model loads
    for family in ("sequence-classification", "st-modular", "bge-decoder-only", "causal-yes-no"):
        # An explicit family is refused before anything is loaded.
        with pytest.raises(ValueError, match=rf"cutoff_layer=3 is not read by family '{family}'"):
            ScorerConfig(model="m", family=family, cutoff_layer=3)
    # family="auto": refused once the model's family is known, naming the one that reads it.
    with pytest.raises(
        ValueError,
        match=r"cutoff_layer=3 is not read by family 'sequence-classification' "
        r"\(model='.*'\); only family [^.]*'bge-layerwise'[^.]* takes cutoff_layer",
    ):
        CrossEncoderScorer(tiny_bert, cutoff_layer=3)
    assert CrossEncoderScorer(tiny_bert, cutoff_layer=None).config.cutoff_layer is None


def test_adapters_accept_and_pass_it(layerwise: Path, adapter_scores) -> None:  # noqa: F811
    from pydantic import ValidationError

    from bge_rerank_plugins.langchain import BGECrossEncoder, BGERerankCompressor
    from bge_rerank_plugins.llama_index import BGEReranker

    expected = CrossEncoderScorer(layerwise, trust_remote_code=True, cutoff_layer=START).score(
        QUERY, PASSAGES
    )
    options = {"model": str(layerwise), "trust_remote_code": True, "cutoff_layer": START}
    llama, chain = adapter_scores(options, QUERY, PASSAGES)
    assert llama == pytest.approx(expected, abs=1e-6)
    assert chain == pytest.approx(expected, abs=1e-6)
    for cls in (BGEReranker, BGERerankCompressor, BGECrossEncoder):
        adapter = cls(model=str(layerwise), trust_remote_code=True, cutoff_layer=START)
        assert adapter.scorer_config().cutoff_layer == START
        assert adapter.model_dump()["cutoff_layer"] == START
        for wrong, match in ((0, "cutoff_layer must be an int >= 1"), (True, "valid integer")):
            with pytest.raises(ValidationError, match=match):
                cls(model=str(layerwise), cutoff_layer=wrong)
        with pytest.raises(ValidationError, match="is not read by family 'st-modular'"):
            cls(model=str(layerwise), family="st-modular", cutoff_layer=START)
    # A shared scorer's layer is its own: setting it on the adapter too is an error.
    shared = CrossEncoderScorer(layerwise, trust_remote_code=True, cutoff_layer=START)
    with pytest.raises(ValidationError, match="cutoff_layer: these loading options belong"):
        BGERerankCompressor(scorer=shared, cutoff_layer=START)


def test_cli_and_ray_take_it() -> None:
    import argparse

    from bge_rerank_plugins.cli import build_parser
    from bge_rerank_plugins.cli.options import add_scorer_arguments, scorer_config_from_args
    from bge_rerank_plugins.ray_scoring import SCORER_OPTIONS

    parser = argparse.ArgumentParser()
    add_scorer_arguments(parser)
    args = parser.parse_args(["--cutoff-layer", "28", "--family", "bge-layerwise"])
    assert scorer_config_from_args(args).cutoff_layer == 28
    assert scorer_config_from_args(parser.parse_args([])).cutoff_layer is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--cutoff-layer", "0"])
    for command in (["score", "--query", "q", "p"], ["evaluate", "--data", "d"]):
        parsed = build_parser().parse_args([*command, "--cutoff-layer", "3"])
        assert parsed.cutoff_layer == 3
    assert "cutoff_layer" in SCORER_OPTIONS


def test_the_server_refuses_it_until_served() -> None:
    pytest.importorskip("fastapi")
    from bge_rerank_plugins.server import ServerConfig

    assert "cutoff_layer" in ServerConfig.SCORER_CONFIG_EXCLUDED
    config = ScorerConfig(model="m", family="bge-layerwise", cutoff_layer=3)
    with pytest.raises(ValueError, match=r"does not take the scorer options \['family', 'cutoff"):
        ServerConfig.from_scorer_config(config)
    assert dataclasses.replace(config, cutoff_layer=None).cutoff_layer is None
