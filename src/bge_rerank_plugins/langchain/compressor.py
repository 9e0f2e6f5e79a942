"""``BGERerankCompressor``: a LangChain ``BaseDocumentCompressor`` on the shared scorer.

``ContextualCompressionRetriever`` lives in ``langchain-classic`` in LangChain 1.x
(``pip install langchain-classic``):

>>> from langchain_classic.retrievers import ContextualCompressionRetriever  # doctest: +SKIP
>>> retriever = ContextualCompressionRetriever(  # doctest: +SKIP
...     base_compressor=BGERerankCompressor(top_n=3), base_retriever=vector_store.as_retriever()
... )

``ContextualCompressionRetriever`` passes the keyword arguments of ``invoke`` to its base
retriever only, never to the compressor: to choose the number of results per call, use
:class:`~bge_rerank_plugins.langchain.BGERerankRetriever` (``invoke(query, k=1)``), or call
``compress_documents(documents, query, top_n=1)`` yourself.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import EllipsisType

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict

from ..adapter_scoring import rank_call
from .documents import DocumentRerankOptions, document_texts, first_stage_of, scored_documents

__all__ = ["BGERerankCompressor"]


class BGERerankCompressor(DocumentRerankOptions, BaseDocumentCompressor):
    """Rerank documents with a cross-encoder; keep the best ``top_n``.

    Args:
        model: Hub id or local directory (default ``BAAI/bge-reranker-v2-m3``), or the URL of
            a reranking server (``"http://host:port"``: a
            ``bge_rerank_plugins.remote.RemoteScorer`` scores).
        top_n: documents to return, best first (default 3; ``None`` keeps all that pass the
            threshold). ``compress_documents(..., top_n=1)`` overrides it for one call.
        score_threshold: drop documents scoring below it.
        normalize: sigmoid scores in [0, 1] (default) or raw logits.
        template: score a text built from ``Document.metadata`` fields and the page content
            (field ``text``), e.g. ``"{title}\\n{text}"``; default: the page content alone.
        device: how the model runs; this and ``dtype``, ``use_fp16``, ``max_length``,
            ``query_max_length``, ``batch_size``, ``token_budget``, ``cache_size``,
            ``backend``, ``revision`` and ``trust_remote_code`` are as for
            :class:`~bge_rerank_plugins.config.ScorerConfig`.
        scorer: an existing :class:`~bge_rerank_plugins.CrossEncoderScorer` to share, or any
            object with its ``score``/``rank`` API (a remote scorer); with an async ``ascore``
            too, :meth:`acompress_documents` awaits it instead of using a thread.

        fusion: fuse with the first stage: a ``FusionConfig``, a dict of its fields, or
            ``"auto"`` (fitted into the model's calibration file); default ``None``.
        first_stage: where a document's first-stage score comes from: ``"metadata:<key>"``
            (default ``"metadata:score"``) or ``"rank"`` (the incoming order); a document
            without it makes the call use the incoming order (one warning).
        timeout: seconds (default ``None``); past it, the first-stage order comes back with
            ``metadata["reranked"] = False`` (``score_threshold`` not applied), never an error.

    ``normalize="calibrated"`` gives probabilities from the model's calibration file. Each
    returned document carries ``metadata["relevance_score"]`` (a float: the fused score with
    ``fusion``), and with ``fusion`` or ``timeout`` set also ``reranker_score``,
    ``first_stage_score``, ``fused_score`` and ``reranked``.

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

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
        *,
        top_n: int | EllipsisType | None = ...,
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``: new documents, best first, at most ``top_n``.

        Args:
            documents: what a retriever returned.
            query: the question.
            callbacks: accepted for LangChain's interface (the reranker reports no events).
            top_n: this call's number of documents (``None``: all that pass the threshold);
                by default the ``top_n`` the compressor was built with.

        >>> compressor.compress_documents(docs, "panda diet", top_n=1)  # doctest: +SKIP
        [Document(metadata={'relevance_score': 0.97}, page_content='Pandas eat bamboo.')]
        """
        documents, texts = document_texts(self, documents, query)
        top_n = rank_call(query, top_n, self.top_n)
        if not texts:
            return []
        return scored_documents(
            documents, self.rank_texts(query, texts, top_n=top_n, **first_stage_of(documents))
        )

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
        *,
        top_n: int | EllipsisType | None = ...,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`: the scorer's ``ascore`` is awaited when it has
        one (a remote scorer); otherwise the model runs in a worker thread."""
        documents, texts = document_texts(self, documents, query)
        top_n = rank_call(query, top_n, self.top_n)
        if not texts:
            return []
        return scored_documents(
            documents,
            await self.arank_texts(query, texts, top_n=top_n, **first_stage_of(documents)),
        )
