"""Every Python code block in README.md and docs/ runs, offline, unless it says it cannot.

A page's blocks run in order in one namespace (later blocks build on earlier ones), in a temporary
working directory. Hub ids of rerankers are served by tiny local models of the same architecture,
so the docs can show the real model names. A block whose first line starts with
``# not runnable offline`` is skipped (it needs a GPU, a server, real data or a long run).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARK = "# not runnable offline"
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(page: Path) -> list[str]:
    return [b for b in BLOCK.findall(page.read_text(encoding="utf-8"))]


def runnable(block: str) -> bool:
    return not block.lstrip().startswith(SKIP_MARK)


def test_the_block_pattern_finds_blocks_and_the_skip_mark() -> None:
    sample = "x\n```python\nprint(1)\n```\n```python\n# not runnable offline: GPU\n```\n"
    page = ROOT / ".cache" / "sample.md"
    page.parent.mkdir(exist_ok=True)
    page.write_text(sample, encoding="utf-8")
    blocks = python_blocks(page)
    assert blocks == ["print(1)\n", "# not runnable offline: GPU\n"]
    assert [runnable(b) for b in blocks] == [True, False]


@pytest.fixture()
def hub_ids_served_locally(monkeypatch, tiny_xlmr: Path, tiny_bert: Path):
    from bge_rerank_plugins.runtime import loading

    stand_ins = {
        "BAAI/bge-reranker-v2-m3": tiny_xlmr,
        "BAAI/bge-reranker-base": tiny_xlmr,
        "BAAI/bge-reranker-large": tiny_xlmr,
        "cross-encoder/ms-marco-MiniLM-L-6-v2": tiny_bert,
    }
    monkeypatch.setattr(loading, "_locate", lambda name: str(stand_ins.get(name, name)))
    return stand_ins


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_code_blocks_run(page: Path, hub_ids_served_locally, tmp_path, monkeypatch) -> None:
    blocks = [b for b in python_blocks(page) if runnable(b)]
    if not blocks:
        pytest.skip(f"{page.name} has no runnable Python block")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{page.name}[block {number}]", "exec"), namespace)
        except Exception as error:  # pragma: no cover - the message is the point
            raise AssertionError(
                f"{page.name}, Python block {number} failed: {type(error).__name__}: {error}\n"
                f"---\n{block}---\n"
                f"Mark it '{SKIP_MARK}: <why>' only if it truly cannot run offline."
            ) from error
