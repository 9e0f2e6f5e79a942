"""bge-rerank-plugins: cross-encoder rerankers as first-class citizens of RAG pipelines.

``import bge_rerank_plugins`` is cheap: torch, transformers and the frameworks load only when the
class that needs them is first used.

>>> from bge_rerank_plugins import CrossEncoderScorer  # doctest: +SKIP
>>> CrossEncoderScorer("BAAI/bge-reranker-v2-m3").score("q", ["a", "b"])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_EXPORTS = {
    "CrossEncoderScorer": "scorer",
    "Ranked": "scorer",
    "DEFAULT_MODEL": "config",
    "ScorerConfig": "config",
    "PassageTemplate": "fields",
    "ScoreCache": "score_cache",
    "ModelNotFoundError": "errors",
    "ModelFilesError": "errors",
    "DeviceUnavailableError": "errors",
    "NonFiniteScoreError": "errors",
    "RandomHeadError": "errors",
    "RerankerError": "errors",
    "clear_model_cache": "runtime.loading",
    "BGEReranker": "llama_index",
    "BGERerankCompressor": "langchain",
    "BGERerankRetriever": "langchain",
    "BGECrossEncoder": "langchain",
    "CrossEncoderFinetuneEngine": "finetune",
    "score_ray_dataset": "ray_scoring",
    "evaluate_reranker": "evaluation",
    "evaluate_models": "evaluation",
    "load_beir": "beir",
}

__all__ = [
    "DEFAULT_MODEL",
    "BGECrossEncoder",
    "BGERerankCompressor",
    "BGERerankRetriever",
    "BGEReranker",
    "CrossEncoderFinetuneEngine",
    "CrossEncoderScorer",
    "DeviceUnavailableError",
    "ModelFilesError",
    "ModelNotFoundError",
    "NonFiniteScoreError",
    "PassageTemplate",
    "RandomHeadError",
    "Ranked",
    "RerankerError",
    "ScoreCache",
    "ScorerConfig",
    "__version__",
    "clear_model_cache",
    "evaluate_models",
    "evaluate_reranker",
    "load_beir",
    "score_ray_dataset",
]

if TYPE_CHECKING:
    from .config import DEFAULT_MODEL, ScorerConfig
    from .errors import (
        DeviceUnavailableError,
        ModelFilesError,
        ModelNotFoundError,
        NonFiniteScoreError,
        RandomHeadError,
        RerankerError,
    )
    from .fields import PassageTemplate
    from .runtime.loading import clear_model_cache
    from .score_cache import ScoreCache
    from .scorer import CrossEncoderScorer, Ranked


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bge_rerank_plugins' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
