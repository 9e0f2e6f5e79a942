"""``BGECrossEncoder``: LangChain's ``BaseCrossEncoder`` interface on the shared scorer.

>>> from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
>>> reranker = CrossEncoderReranker(model=BGECrossEncoder(), top_n=3)
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod

from pydantic import ConfigDict

from ..adapter_options import ScorerOptions
from ..adapter_scoring import score_pairs

__all__ = ["BGECrossEncoder", "BaseCrossEncoder"]

logger = logging.getLogger(__name__)

# Where LangChain's cross-encoder interface lives: langchain-core from 1.3 on (langchain-classic
# re-exports it); before that, langchain-classic and langchain 0.3 each defined their own, and
# CrossEncoderReranker checks for that one.
_CROSS_ENCODER_MODULES = (
    "langchain_core.cross_encoders",
    "langchain_classic.retrievers.document_compressors.cross_encoder",
    "langchain.retrievers.document_compressors.cross_encoder",
)


class _StandInCrossEncoder(ABC):
    """LangChain's ``BaseCrossEncoder`` interface, for installs that have none to import."""

    @abstractmethod
    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Scores of ``(query, passage)`` pairs."""


def _base_cross_encoder() -> type:
    for module in _CROSS_ENCODER_MODULES:
        try:
            return importlib.import_module(module).BaseCrossEncoder
        except (ImportError, AttributeError):
            continue
    logger.debug("No LangChain BaseCrossEncoder found; BGECrossEncoder uses a stand-in ABC.")
    return _StandInCrossEncoder


BaseCrossEncoder = _base_cross_encoder()


class BGECrossEncoder(ScorerOptions, BaseCrossEncoder):
    """LangChain ``BaseCrossEncoder`` on the shared scorer, for ``CrossEncoderReranker``.

    Args:
        model: as for :class:`~bge_rerank_plugins.langchain.BGERerankCompressor` (a Hub id, a
            local directory or a reranking server's URL), and so are ``normalize``,
            ``scorer`` and the loading options (``device``, ``dtype``, ``use_fp16``,
            ``max_length``, ``query_max_length``, ``batch_size``, ``token_budget``,
            ``cache_size``, ``backend``, ``revision``, ``trust_remote_code``). There is no
            ``template``: the pairs are text already (share a scorer built with
            ``template=`` to render ``Document`` passages differently).

    Example:
        >>> BGECrossEncoder().score([("panda diet", "Pandas eat bamboo.")])  # doctest: +SKIP
        [0.97]
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Scores of ``(query, passage)`` pairs, in input order.

        A passage may also be a ``Document`` (its page content and metadata are used as by
        :class:`~bge_rerank_plugins.CrossEncoderScorer`). A scorer without ``score_pairs``
        (a remote one) is called once per distinct query.
        """
        return score_pairs(self.get_scorer(), text_pairs, normalize=self.normalize)
