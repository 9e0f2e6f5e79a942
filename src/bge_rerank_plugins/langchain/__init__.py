"""LangChain: a reranking retriever, a document compressor and a ``BaseCrossEncoder``.

All three need only ``langchain-core`` and share one scorer (:mod:`~bge_rerank_plugins.scorer`,
or a remote one: ``model="http://host:port"`` or ``scorer=``):

- :class:`BGERerankRetriever` wraps any retriever and returns its best ``k`` documents,
  reranked; ``k`` is set at construction and per call (``retriever.invoke(query, k=1)``).
- :class:`BGERerankCompressor` is a ``BaseDocumentCompressor`` for LangChain's
  ``ContextualCompressionRetriever`` (in ``langchain-classic`` from LangChain 1.x).
- :class:`BGECrossEncoder` is a ``BaseCrossEncoder`` for LangChain's ``CrossEncoderReranker``.

>>> retriever = BGERerankRetriever(  # doctest: +SKIP
...     base_retriever=vector_store.as_retriever(search_kwargs={"k": 20}), k=3
... )
>>> retriever.invoke("what do pandas eat?", k=1)  # doctest: +SKIP
[Document(metadata={'relevance_score': 0.97}, page_content='Pandas eat bamboo.')]

What is mutated: nothing. Reranked results are new ``Document`` objects (shallow copies: same
``page_content`` and ``id``, a new ``metadata`` dict with ``relevance_score`` added).
"""

from __future__ import annotations

from .compressor import BGERerankCompressor
from .cross_encoder import BaseCrossEncoder, BGECrossEncoder
from .retriever import BGERerankRetriever

__all__ = ["BGECrossEncoder", "BGERerankCompressor", "BGERerankRetriever", "BaseCrossEncoder"]
