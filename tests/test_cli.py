"""The ``bge-rerank`` command line: a bad option or input is one line and a non-zero exit,
never a Python traceback (unless ``--debug``)."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bge_rerank_plugins.beir import write_beir
from bge_rerank_plugins.cli import build_parser, main
from bge_rerank_plugins.errors import ModelNotFoundError


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("bge-rerank: error: ")
    return lines[0]


def _dataset(tmp_path: Path) -> Path:
    return write_beir(
        tmp_path / "data",
        corpus={
            "d1": {"title": "Beijing", "text": "Beijing is the capital of China."},
            "d2": {"title": "Tax", "text": "Capital gains tax."},
        },
        queries={"q1": "capital of China"},
        qrels={"test": {"q1": {"d1": 1}}},
    )


# ------------------------------------------------------------------ models and devices
def test_bad_model_path_is_one_line(capsys) -> None:
    assert main(["score", "--model", "./no/such/model", "--query", "q", "p"]) == 1
    line = _one_error_line(capsys)
    assert "model='./no/such/model'" in line and "no such directory" in line


def test_hub_id_while_offline_is_one_line(capsys) -> None:
    assert main(["score", "--model", "BAAI/no-such-reranker", "--query", "q", "p"]) == 1
    line = _one_error_line(capsys)
    assert "offline" in line and "hf download" in line


def test_empty_model_folder_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["score", "--model", str(tmp_path / "empty"), "--query", "q", "p"]) == 1
    assert "is empty" in _one_error_line(capsys)


def test_bad_device_is_one_line(tiny_bert: Path, capsys) -> None:
    assert main(["score", "--model", str(tiny_bert), "--device", "gpu", "--query", "q", "p"]) == 1
    assert "device='gpu'" in _one_error_line(capsys)


def test_debug_shows_the_traceback(capsys) -> None:
    args = ["score", "--model", "./no/such/model", "--query", "q", "p"]
    with pytest.raises(ModelNotFoundError):
        main(["--debug", *args])
    with pytest.raises(ModelNotFoundError):
        main([*args, "--debug"])  # also after the subcommand


def test_verbose_prints_the_traceback_then_the_line(capsys) -> None:
    assert main(["-v", "score", "--model", "./no/such/model", "--query", "q", "p"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("bge-rerank: error:")


# ------------------------------------------------------------------ option values
@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["score", "--query", "q", "p", "--max-length", "4"], "--max-length"),
        (["score", "--query", "q", "p", "--max-length", "long"], "--max-length"),
        (["score", "--query", "q", "p", "--top-k", "0"], "--top-k"),
        (["score", "--query", "q", "p", "--top-k", "three"], "--top-k"),
        (["serve", "--threads", "0"], "--threads"),
        (["serve", "--max-documents", "-5"], "--max-documents"),
        (["serve", "--port", "0"], "--port"),
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--port", "http"], "--port"),
        (["serve", "--max-length", "2"], "--max-length"),
        (["serve", "--batch-size", "0"], "--batch-size"),
        (["evaluate", "--data", "d", "--top-k", "0"], "--top-k"),
        (["evaluate", "--data", "d", "--ks", "1,x"], "--ks"),
        (["evaluate", "--data", "d", "--max-queries", "0"], "--max-queries"),
    ],
)
def test_bad_option_values_name_the_option(
    argv: list[str], option: str, capsys, monkeypatch
) -> None:
    def must_not_run(args):
        raise AssertionError(f"{option} was accepted and the command ran")

    # Each subcommand module's parser binds its own run() as the handler.
    for command in ("score", "serve", "evaluate"):
        monkeypatch.setattr(f"bge_rerank_plugins.cli.{command}.run", must_not_run)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"argument {option}" in err.splitlines()[-1]


def test_good_option_values_parse() -> None:
    args = build_parser().parse_args(
        ["serve", "--port", "65535", "--threads", "2", "--max-length", "auto"]
    )
    assert (args.port, args.threads, args.max_length) == (65535, 2, "auto")
    args = build_parser().parse_args(["score", "--query", "q", "p", "--max-length", "128"])
    assert args.max_length == 128 and args.debug is False
    args = build_parser().parse_args(["evaluate", "--data", "d", "--ks", "1, 5,10"])
    assert args.ks == (1, 5, 10)


# ------------------------------------------------------------------ evaluate paths
def test_missing_data_folder_is_one_line(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope"
    assert main(["evaluate", "--data", str(missing), "--model", str(tiny_bert)]) == 1
    line = _one_error_line(capsys)
    assert "--data" in line and "does not exist" in line


def test_missing_split_lists_the_available_ones(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    data = _dataset(tmp_path)
    argv = ["evaluate", "--data", str(data), "--split", "dev", "--model", str(tiny_bert)]
    assert main(argv) == 1
    line = _one_error_line(capsys)
    assert "--split dev" in line and "available splits: ['test']" in line


def test_out_path_that_is_a_file_fails_before_loading(
    tiny_bert: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import bge_rerank_plugins.scorer as scorer_module

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(scorer_module, "CrossEncoderScorer", no_loading)
    data = _dataset(tmp_path)
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    argv = ["evaluate", "--data", str(data), "--split", "test", "--model", str(tiny_bert)]
    assert main([*argv, "--out", str(out)]) == 1
    line = _one_error_line(capsys)
    assert "--out" in line and "is a file" in line
    assert main([*argv, "--out", str(out / "sub")]) == 1
    assert "cannot be created" in _one_error_line(capsys)


def test_evaluate_still_writes_its_results(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    data = _dataset(tmp_path)
    out = tmp_path / "out"
    argv = ["evaluate", "--data", str(data), "--split", "test", "--model", f"tiny={tiny_bert}"]
    assert main([*argv, "--out", str(out), "--no-chart", "--ks", "1,2", "--top-k", "2"]) == 0
    assert (out / "metrics.json").is_file()
    assert "tiny" in capsys.readouterr().out


# ------------------------------------------------------------------ a real process
def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bge_rerank_plugins.cli",
            "score",
            "--model",
            "./missing",
            "--query",
            "q",
            "p",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("bge-rerank: error: model='./missing'")


# ------------------------------------------------------------------ the package's entry points
def test_the_description_names_only_real_subcommands() -> None:
    parser = build_parser()
    listed = parser.description.split(":", 1)[1].rstrip(".").split(",")
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert [name.strip() for name in listed] == list(subparsers.choices)


def test_the_console_script_is_main() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    module, _, attribute = project["scripts"]["bge-rerank"].partition(":")
    assert getattr(importlib.import_module(module), attribute) is main
