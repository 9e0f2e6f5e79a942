"""LangChain: a document compressor and a ``BaseCrossEncoder`` on the shared scorer.

Both need only ``langchain-core``. ``ContextualCompressionRetriever`` and ``CrossEncoderReranker``
live in ``langchain-classic`` in LangChain 1.x (``pip install langchain-classic``).

>>> from langchain_classic.retrievers import ContextualCompressionRetriever  # doctest: +SKIP
>>> retriever = ContextualCompressionRetriever(  # doctest: +SKIP
...     base_compressor=BGERerankCompressor(top_n=3), base_retriever=vector_store.as_retriever()
... )

What is mutated: nothing. :class:`BGERerankCompressor` returns new ``Document`` objects (shallow
copies: same ``page_content`` and ``id``, a new ``metadata`` dict with ``relevance_score`` added).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict

from .adapter_options import RerankOptions, ScorerOptions

__all__ = ["BGECrossEncoder", "BGERerankCompressor"]

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


class BGERerankCompressor(RerankOptions, BaseDocumentCompressor):
    """Rerank documents with a cross-encoder; keep the best ``top_n``.

    Args:
        model: Hub id or local directory (default ``BAAI/bge-reranker-v2-m3``).
        top_n: documents to return, best first (default 3; ``None`` keeps all that pass the
            threshold).
        score_threshold: drop documents scoring below it.
        normalize: sigmoid scores in [0, 1] (default) or raw logits.
        template: score a text built from ``Document.metadata`` fields and the page content
            (field ``text``), e.g. ``"{title}\\n{text}"``; default: the page content alone.
        device: how the model runs; this and ``dtype``, ``use_fp16``, ``max_length``,
            ``query_max_length``, ``batch_size``, ``token_budget``, ``cache_size``,
            ``backend``, ``revision`` and ``trust_remote_code`` are as for
            :class:`~bge_rerank_plugins.config.ScorerConfig`.
        scorer: an existing :class:`~bge_rerank_plugins.CrossEncoderScorer` to share.

    Each returned document carries ``metadata["relevance_score"]`` (a float).

    Example:
        >>> from langchain_core.documents import Document
        >>> compressor = BGERerankCompressor(top_n=1)
        >>> compressor.compress_documents(  # doctest: +SKIP
        ...     [Document("Pandas eat bamboo."), Document("Paris is in France.")], "panda diet"
        ... )
        [Document(metadata={'relevance_score': 0.97}, page_content='Pandas eat bamboo.')]
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    def document_text(self, document: Document, index: int | None = None) -> str:
        """The text scored for ``document``: page content, or the template over metadata."""
        return self.record_text(document.page_content, document.metadata, index)

    def _texts(
        self, documents: Sequence[Document], query: str
    ) -> tuple[Sequence[Document], list[str]]:
        """Check the arguments of :meth:`compress_documents`; the documents and their texts.

        A generator of documents is read once into a list.
        """
        if documents is None or not isinstance(documents, Iterable):
            raise TypeError(
                f"documents must be a list of langchain_core Document objects, got "
                f"{type(documents).__name__}."
            )
        if isinstance(documents, (str, bytes)) or isinstance(documents, Document):
            raise TypeError(
                f"documents must be a list of langchain_core Document objects, got a single "
                f"{type(documents).__name__}; wrap it in a list (compress_documents takes "
                "documents first, then the query)."
            )
        if not isinstance(query, str):
            raise TypeError(
                f"query must be a string, got {type(query).__name__} (compress_documents takes "
                "documents first, then the query)."
            )
        if not isinstance(documents, Sequence):
            documents = list(documents)
        texts = []
        for i, document in enumerate(documents):
            if not isinstance(document, Document):
                hint = (
                    "; wrap each string: Document(page_content=text)"
                    if isinstance(document, str)
                    else ""
                )
                raise TypeError(
                    f"documents[{i}] is a {type(document).__name__}, not a langchain_core "
                    f"Document{hint}. To score plain strings, use CrossEncoderScorer.rank."
                )
            texts.append(self.document_text(document, i))
        return documents, texts

    def _results(
        self, documents: Sequence[Document], ranked: list[tuple[int, float]]
    ) -> list[Document]:
        return [
            documents[i].model_copy(
                update={"metadata": {**documents[i].metadata, "relevance_score": float(score)}}
            )
            for i, score in ranked
        ]

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``: new documents, best first, at most ``top_n``."""
        documents, texts = self._texts(documents, query)
        if not texts:
            return []
        return self._results(documents, self.rank_texts(query, texts))

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`; the model runs in a worker thread."""
        documents, texts = self._texts(documents, query)
        if not texts:
            return []
        ranked = await asyncio.to_thread(self.rank_texts, query, texts)
        return self._results(documents, ranked)


class BGECrossEncoder(ScorerOptions, BaseCrossEncoder):
    """LangChain ``BaseCrossEncoder`` on the shared scorer, for ``CrossEncoderReranker``.

    Args:
        model: as for :class:`BGERerankCompressor`, and so are ``normalize``, ``scorer`` and
            the loading options (``device``, ``dtype``, ``use_fp16``, ``max_length``,
            ``query_max_length``, ``batch_size``, ``token_budget``, ``cache_size``,
            ``backend``, ``revision``, ``trust_remote_code``). There is no ``template``:
            the pairs are text already (share a scorer built with ``template=`` to render
            ``Document`` passages differently).

    Example:
        >>> from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
        >>> reranker = CrossEncoderReranker(model=BGECrossEncoder(), top_n=3)
        >>> BGECrossEncoder().score([("panda diet", "Pandas eat bamboo.")])  # doctest: +SKIP
        [0.97]
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Scores of ``(query, passage)`` pairs, in input order.

        A passage may also be a ``Document`` (its page content and metadata are used as by
        :class:`~bge_rerank_plugins.CrossEncoderScorer`).
        """
        return self.get_scorer().score_pairs(text_pairs, normalize=self.normalize)
