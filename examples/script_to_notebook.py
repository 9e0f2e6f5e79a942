"""Write ``examples/finetune_domain.ipynb`` from ``examples/finetune_domain.py``.

The script is the source: its docstring becomes the first Markdown cell, every ``# %%`` block a
code cell and every ``# %% [markdown]`` block a Markdown cell. ``tests/test_finetune_notebook.py``
fails when the notebook is out of date; rerun this then:

    python examples/script_to_notebook.py
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

EXAMPLES = Path(__file__).parent
SCRIPT = EXAMPLES / "finetune_domain.py"
NOTEBOOK = EXAMPLES / "finetune_domain.ipynb"


def _lines(text: str) -> list[str]:
    lines = text.strip("\n").split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def _cell(kind: str, text: str) -> dict:
    # ids derived from the content keep the file stable across regenerations
    cell_id = hashlib.sha1(f"{kind}\n{text}".encode()).hexdigest()[:8]
    cell = {"cell_type": kind, "id": cell_id, "metadata": {}, "source": _lines(text)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def script_cells(script: Path = SCRIPT) -> list[dict]:
    """The notebook cells of ``script`` (``# %%`` percent format)."""
    source = script.read_text()
    docstring = ast.get_docstring(ast.parse(source)) or ""
    header = f"*Generated from `examples/{script.name}`; keep the two in sync.*\n\n"
    cells = [_cell("markdown", header + docstring)]
    blocks = source.split("\n# %%")[1:]
    for block in blocks:
        first, _, body = block.partition("\n")
        if first.strip() == "[markdown]":
            text = "\n".join(line.removeprefix("#").removeprefix(" ") for line in body.split("\n"))
            cells.append(_cell("markdown", text))
        else:
            cells.append(_cell("code", body))
    return cells


def build_notebook(script: Path = SCRIPT) -> dict:
    return {
        "cells": script_cells(script),
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


if __name__ == "__main__":
    NOTEBOOK.write_text(json.dumps(build_notebook(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {NOTEBOOK}")
