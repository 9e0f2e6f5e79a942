"""The fine-tuning example notebook runs end to end on a tiny model and a tiny BEIR folder."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
NOTEBOOK = EXAMPLES / "finetune_domain.ipynb"


def test_notebook_matches_the_script() -> None:
    spec = importlib.util.spec_from_file_location(
        "script_to_notebook", EXAMPLES / "script_to_notebook.py"
    )
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    cells = [
        (c["cell_type"], "".join(c["source"])) for c in json.loads(NOTEBOOK.read_text())["cells"]
    ]
    expected = [(c["cell_type"], "".join(c["source"])) for c in converter.script_cells()]
    assert cells == expected, "run: python examples/script_to_notebook.py"


def _tiny_beir(folder: Path) -> Path:
    from bge_rerank_plugins.beir import write_beir

    topics = [
        ("panda", "The giant panda eats bamboo", "pandas eat bamboo in China"),
        ("capital", "Beijing is the capital of China", "capital of China city"),
        ("iphone", "A wet iPhone must be switched off", "iphone water damage"),
        ("aspirin", "Aspirin reduces fever and pain", "aspirin for fever"),
        ("vaccine", "The vaccine trial reported ninety percent efficacy", "vaccine efficacy"),
        ("tax", "Capital gains tax applies when you sell shares", "tax on selling shares"),
    ]
    corpus = {f"d{i}": {"title": t, "text": text} for i, (t, text, _) in enumerate(topics)}
    queries = {f"q{i}": q for i, (_, _, q) in enumerate(topics)}
    qrels = {
        "train": {f"q{i}": {f"d{i}": 1} for i in range(4)},
        "dev": {f"q{i}": {f"d{i}": 1} for i in range(4, 6)},
    }
    return write_beir(folder, corpus=corpus, queries=queries, qrels=qrels)


def test_finetune_notebook_executes(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    data = _tiny_beir(tmp_path / "beir")
    monkeypatch.setenv("BGE_RERANK_EXAMPLE_DATA", str(data))
    monkeypatch.setenv("BGE_RERANK_EXAMPLE_MODEL", str(tiny_bert))
    # any encoder serves as the bi-encoder teacher of the smoke run (mean pooling over its body)
    monkeypatch.setenv("BGE_RERANK_EXAMPLE_TEACHER", str(tiny_bert))
    monkeypatch.setenv("BGE_RERANK_EXAMPLE_MINUTES", "0.1")
    monkeypatch.setenv("BGE_RERANK_EXAMPLE_OUT", str(tmp_path / "run"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute(env=dict(os.environ))
    outputs = "".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "samples;" in outputs and "steps in" in outputs, outputs  # the LlamaIndex-style call
    # the dev table: the first stage, the fine-tuned model, and its verdict against BM25
    assert "fine-tuned" in outputs and "nDCG@10" in outputs, outputs
    assert (tmp_path / "run" / "model" / "config.json").is_file()
