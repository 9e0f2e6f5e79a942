"""Domain fine-tuning of cross-encoder rerankers: training data, hard negatives, the engine.

Everything here is imported lazily (``import bge_rerank_plugins.finetune`` loads no torch):

* :mod:`~bge_rerank_plugins.finetune.data`: the training-data formats (LlamaIndex samples,
  pointwise rows, triplets, FlagEmbedding JSONL, BEIR folders) read into one record type,
  :class:`TrainingGroup`, with a pointwise view :class:`PointwiseExample`.
* :mod:`~bge_rerank_plugins.finetune.negatives`: hard-negative mining (given candidate lists,
  BM25, a dense bi-encoder, or a cross-encoder).
* :mod:`~bge_rerank_plugins.finetune.teachers`: teacher scores from a bi-encoder, for
  ``loss="distill"``.
* :mod:`~bge_rerank_plugins.finetune.engine`: :class:`CrossEncoderFinetuneEngine`, a facade
  over :mod:`~bge_rerank_plugins.finetune.recipe` (:class:`FinetuneConfig`, the options),
  :mod:`~bge_rerank_plugins.finetune.grouping` (training datasets),
  :mod:`~bge_rerank_plugins.finetune.modeling` (the base model) and
  :mod:`~bge_rerank_plugins.finetune.trainer` (the training loop's parts).
* :mod:`~bge_rerank_plugins.finetune.causal`: :func:`finetune_causal_reranker`, LoRA
  fine-tuning of causal-LM rerankers (bge-reranker-v2-gemma, Qwen3-Reranker) on their own
  score; the engine routes such a ``model_id`` there (:class:`CausalFinetuneEngine`).

>>> from bge_rerank_plugins.finetune import TrainingGroup
>>> TrainingGroup("q", positives=("a",), negatives=("b", "c")).size
3
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it (imported on first access). A submodule that is not
# there (yet) only fails for the names it owns.
_EXPORTS = {
    "TrainingGroup": "data",
    "PointwiseExample": "data",
    "load_training_data": "data",
    "read_training_jsonl": "data",
    "write_training_jsonl": "data",
    "groups_from_beir": "data",
    "samples_from_beir": "data",
    "groups_from_pointwise": "data",
    "groups_to_pointwise": "data",
    "from_llama_index_samples": "data",
    "mine_hard_negatives": "negatives",
    "select_negatives": "negatives",
    "NegativeMiningConfig": "negatives",
    "CrossEncoderFinetuneEngine": "engine",
    "FinetuneConfig": "recipe",
    "FinetuneResult": "recipe",
    "biencoder_teacher_scores": "teachers",
    "finetune_causal_reranker": "causal",
    "CausalFinetuneResult": "causal",
    "CausalFinetuneEngine": "causal_engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bge_rerank_plugins.finetune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
