"""``BGERerankRetriever``: any LangChain retriever, reranked; the best ``k`` documents.

Unlike ``ContextualCompressionRetriever`` (whose ``invoke`` keyword arguments reach the base
retriever only), the number of results is LangChain's retriever convention: ``k`` at
construction, and ``invoke(query, k=1)`` for one call.

>>> retriever = BGERerankRetriever(  # doctest: +SKIP
...     base_retriever=vector_store.as_retriever(search_kwargs={"k": 20}), k=3
... )
>>> [d.metadata["relevance_score"] for d in retriever.invoke("panda diet", k=2)]  # doctest: +SKIP
[0.97, 0.41]
"""

from __future__ import annotations

from types import EllipsisType
from typing import Any, ClassVar

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever, RetrieverLike
from pydantic import ConfigDict, Field, field_validator, model_validator

from ..adapter_scoring import check_top_n
from .documents import DocumentRerankOptions, document_texts, first_stage_of, scored_documents

__all__ = ["BGERerankRetriever"]


class BGERerankRetriever(DocumentRerankOptions, BaseRetriever):
    """Retrieve with ``base_retriever``, rerank with a cross-encoder, return the best ``k``.

    Args:
        base_retriever: any LangChain retriever (or runnable from a query string to a list of
            ``Document``); it decides how many candidates are reranked (e.g.
            ``vector_store.as_retriever(search_kwargs={"k": 20})``).
        k: documents to return, best first (default 3; ``None`` keeps all that pass
            ``score_threshold``). ``invoke(query, k=1)`` overrides it for one call.

    The other options -- ``model``, ``score_threshold``, ``normalize``, ``template``,
    ``fusion``, ``first_stage``, ``timeout``, ``scorer`` and the loading options (``device``,
    ``dtype``, ``use_fp16``, ``max_length``, ``batch_size``, ...) -- are as for
    :class:`~bge_rerank_plugins.langchain.BGERerankCompressor` (whose ``top_n`` is ``k``
    here). ``model`` may be a reranking server's URL, ``scorer`` a remote scorer.

    Each returned document is a copy with ``metadata["relevance_score"]`` (a float).
    ``ainvoke`` awaits the base retriever's ``ainvoke`` and the scorer's ``ascore`` (a remote
    scorer), or runs the model in a worker thread: the event loop stays free.

    Example:
        >>> from langchain_core.documents import Document
        >>> from langchain_core.retrievers import BaseRetriever
        >>> class Fixed(BaseRetriever):
        ...     def _get_relevant_documents(self, query, *, run_manager):
        ...         return [Document("Pandas eat bamboo."), Document("Paris is in France.")]
        >>> retriever = BGERerankRetriever(base_retriever=Fixed(), k=2)
        >>> retriever.k
        2
        >>> retriever.invoke("panda diet", k=1)  # doctest: +SKIP
        [Document(metadata={'relevance_score': 0.97}, page_content='Pandas eat bamboo.')]
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    #: Not a field here: the number of results is ``k``, the name LangChain retrievers use.
    top_n: ClassVar[None] = None

    base_retriever: RetrieverLike = Field(
        description="The retriever whose results are reranked (it decides how many "
        "candidates there are)."
    )
    k: int | None = Field(
        default=3,
        ge=1,
        description="Number of documents to return, best first; None keeps every document "
        "that passes score_threshold. invoke(query, k=...) overrides it for one call.",
    )

    @model_validator(mode="before")
    @classmethod
    def _k_not_top_n(cls, data: Any) -> Any:
        if isinstance(data, dict) and "top_n" in data:
            raise ValueError(
                "top_n: BGERerankRetriever calls the number of results k, as LangChain "
                f"retrievers do; pass k={data['top_n']!r} instead of top_n."
            )
        return data

    @field_validator("k", mode="before")
    @classmethod
    def _k_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"k must be a positive int or None, not a bool ({value!r})")
        return value

    def _k(self, k: int | EllipsisType | None) -> int | None:
        return self.k if k is ... else check_top_n(k, "k")

    @staticmethod
    def _check_query(query: Any) -> None:
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | EllipsisType | None = ...,
    ) -> list[Document]:
        """The base retriever's documents for ``query``, reranked: the best ``k``."""
        self._check_query(query)
        k = self._k(k)
        candidates = self.base_retriever.invoke(
            query, config={"callbacks": run_manager.get_child()}
        )
        documents, texts = document_texts(self, candidates, query)
        if not texts:
            return []
        return scored_documents(
            documents, self.rank_texts(query, texts, top_n=k, **first_stage_of(documents))
        )

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | EllipsisType | None = ...,
    ) -> list[Document]:
        """Async :meth:`_get_relevant_documents`; nothing blocks the event loop."""
        self._check_query(query)
        k = self._k(k)
        candidates = await self.base_retriever.ainvoke(
            query, config={"callbacks": run_manager.get_child()}
        )
        documents, texts = document_texts(self, candidates, query)
        if not texts:
            return []
        return scored_documents(
            documents, await self.arank_texts(query, texts, top_n=k, **first_stage_of(documents))
        )
