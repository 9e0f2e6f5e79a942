"""The runnable examples in the core modules' docstrings stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "bge_rerank_plugins.fields",
    "bge_rerank_plugins.batching",
    "bge_rerank_plugins.score_cache",
    "bge_rerank_plugins.finetune.data",
    "bge_rerank_plugins.finetune.records",
    "bge_rerank_plugins.finetune.formats",
    "bge_rerank_plugins.finetune.sources",
    "bge_rerank_plugins.runtime.first_token",
    "bge_rerank_plugins.runtime.loading",
    "bge_rerank_plugins.runtime.heads",
    "bge_rerank_plugins.runtime.half_weights",
    "bge_rerank_plugins.tokenization",
    "bge_rerank_plugins.runtime.backends.torch_int8",
    "bge_rerank_plugins.runtime.backends",
    "bge_rerank_plugins.runtime.backends.base",
    "bge_rerank_plugins.runtime.families",
    "bge_rerank_plugins.adapter_scoring",
    "bge_rerank_plugins.adapter_ranking",
    "bge_rerank_plugins.langchain.documents",
    "bge_rerank_plugins.langchain.compressor",
    "bge_rerank_plugins.langchain.retriever",
    "bge_rerank_plugins.langchain.cross_encoder",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    if name.startswith("bge_rerank_plugins.langchain"):
        pytest.importorskip("langchain_core")
        pytest.importorskip("langchain_classic")  # the cross-encoder's example imports it
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
