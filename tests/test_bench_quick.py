"""`benchmarks/bench_scorer.py --quick` runs on a tiny model and checks that the libraries agree.

The script's ``main`` is called in-process (the CLI path, minus a fresh interpreter per test).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_scorer", ROOT / "benchmarks" / "bench_scorer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_quick_on_tiny_model(bench, tiny_bert, tmp_path, capsys):
    pytest.importorskip("sentence_transformers")
    code = bench.main(
        [
            "--quick",
            "--model",
            str(tiny_bert),
            "--data",
            str(tmp_path / "no-data-here"),
            "--max-length",
            "128",
            "--peers",
            "st",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "synthetic English" in out
    assert "sentence-transformers predict" in out
    assert "agreement: max abs diff" in out


def test_bench_quick_fails_on_disagreement(bench, tiny_bert, tmp_path, capsys):
    """A tolerance that no two computations can meet makes the check exit 1."""
    pytest.importorskip("onnxruntime")
    code = bench.main(
        [
            "--quick",
            "--model",
            str(tiny_bert),
            "--data",
            str(tmp_path / "no-data-here"),
            "--peers",
            "",
            "--atol",
            "-1",
        ]
    )
    assert code == 1
    assert "> atol" in capsys.readouterr().out
