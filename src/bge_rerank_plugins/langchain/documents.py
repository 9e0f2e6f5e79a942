"""``Document`` in, ``Document`` out: what the LangChain adapters score and what they return.

>>> from langchain_core.documents import Document
>>> from bge_rerank_plugins.adapter_options import RerankOptions
>>> docs, texts = document_texts(RerankOptions(), [Document("Pandas eat bamboo.")], "diet")
>>> texts
['Pandas eat bamboo.']
>>> scored_documents(docs, [Hit(0, 0.9)])[0].metadata
{'relevance_score': 0.9}
>>> DocumentRerankOptions().first_stage
'metadata:score'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

from langchain_core.documents import Document
from pydantic import Field

from ..adapter_options import RerankOptions
from ..adapter_ranking import Hit

__all__ = [
    "SCORE_KEY",
    "DocumentRerankOptions",
    "document_texts",
    "first_stage_of",
    "scored_documents",
]

#: The metadata key that holds the ranked score (fused, or the reranker's) of each document.
SCORE_KEY = "relevance_score"


class DocumentRerankOptions(RerankOptions):
    """:class:`RerankOptions` for ``Document`` lists: a ``Document`` has no score of its own,
    so the first-stage score is a metadata entry (default ``metadata["score"]``) or the rank."""

    FIRST_STAGE_SOURCES: ClassVar[tuple[str, ...]] = ("metadata:", "rank")

    first_stage: str = Field(
        default="metadata:score",
        description="Where each document's first-stage score comes from: 'metadata:<key>' "
        "(default 'metadata:score') or 'rank' (the incoming order). LangChain's vector store "
        "retrievers keep no score: copy it into metadata, or use 'rank'.",
    )


def document_texts(
    options: RerankOptions, documents: Sequence[Document], query: str
) -> tuple[Sequence[Document], list[str]]:
    """Check ``documents`` and ``query``; the documents (a list if they were an iterator) and
    the text scored for each (``options.record_text``: page content, or the template).

    Raises:
        TypeError: ``documents`` is not a list of ``Document`` (a single one, a string, ...),
            or ``query`` is not a string; the message says what to pass instead.
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
        texts.append(options.record_text(document.page_content, document.metadata, i))
    return documents, texts


def scored_documents(documents: Sequence[Document], ranked: list[Hit]) -> list[Document]:
    """New documents for the ``ranked`` hits, in that order, each with
    ``metadata["relevance_score"]`` and, with ``fusion``/``timeout`` set, the
    ``reranker_score``, ``first_stage_score``, ``fused_score`` and ``reranked`` keys (the
    inputs are left as they were)."""
    return [
        documents[i].model_copy(
            update={"metadata": {**documents[i].metadata, SCORE_KEY: float(score), **(extra or {})}}
        )
        for i, score, extra in ranked
    ]


def first_stage_of(documents: Sequence[Document]) -> dict[str, list]:
    """What ``first_stage`` reads from: each document's metadata."""
    return {"metadatas": [d.metadata for d in documents]}
