"""``POST /v1/rerank`` and ``POST /v2/rerank``: Cohere shapes (the ``cohere`` SDK's ``Client``
and ``ClientV2`` work when pointed at the server with ``base_url``).

Documents may be strings or objects; an object is scored on its ``rank_fields`` (v1; default
``["text"]``) joined by newlines, and returned as sent (with ``text`` filled in if absent).
``max_tokens_per_doc`` (Cohere v2, vLLM), ``max_tokens_per_query`` and ``truncate_prompt_tokens``
(vLLM) are honoured (:mod:`..truncation`). An empty ``documents`` list is a 400, as Cohere's API
answers it (``invalid request: list of documents must not be empty``), and bills nothing.
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from ...fields import best_first
from ...scorer import sigmoid
from ..auth import require_api_key
from ..checks import check_value
from ..errors import ApiError, ErrorKind
from ..schemas import CohereRerankResponse, CohereV1RerankRequest, CohereV2RerankRequest
from ..service import ScorerService, get_service
from ..truncation import Truncation

__all__ = [
    "cohere_rerank",
    "document_texts",
    "rerank_v1",
    "rerank_v2",
    "returned_document",
    "router",
    "token_limits",
]

router = APIRouter()


def document_texts(
    documents: list[Any], rank_fields: list[str] | None, return_documents: bool
) -> list[str]:
    """The text scored for each document; 422 naming the document at fault.

    Strings are scored as they are; an object on its ``rank_fields`` (default ``["text"]``),
    each a string, joined by newlines.
    """
    fields = rank_fields or ["text"]
    texts = []
    for i, doc in enumerate(documents):
        check_value(doc, f"documents[{i}]")
        if isinstance(doc, str):
            texts.append(doc)
            continue
        parts = []
        for name in fields:
            value = doc.get(name)
            if not isinstance(value, str):
                raise ApiError(
                    ErrorKind.INVALID,
                    f"documents[{i}] has no string field {name!r}; object documents need "
                    f"the fields named by rank_fields (default ['text']).",
                    field=f"documents[{i}].{name}",
                )
            parts.append(value)
        if return_documents and "text" in doc and not isinstance(doc["text"], str):
            raise ApiError(
                ErrorKind.INVALID,
                f"documents[{i}].text is {type(doc['text']).__name__}, not a string; a "
                "returned document's text field must be a string (rename the field, or "
                "send return_documents=false).",
                field=f"documents[{i}].text",
            )
        texts.append("\n".join(parts))
    return texts


def returned_document(doc: Any, text: str) -> dict[str, Any]:
    """The document as returned: an object as sent (``text`` filled in), a string as ``{text}``."""
    if isinstance(doc, dict):
        return {**doc, "text": doc.get("text", text)}
    return {"text": text}


def token_limits(body: Any) -> Truncation:
    """The truncation a Cohere v2 / vLLM body asks for (``truncate_prompt_tokens=-1``: the
    model's limit, as vLLM reads it; ``truncation_side="left"``: cut documents from the start)."""
    pair = body.truncate_prompt_tokens
    return Truncation(
        left=body.truncation_side == "left",
        max_doc_tokens=body.max_tokens_per_doc,
        max_query_tokens=body.max_tokens_per_query,
        max_pair_tokens=None if pair is None or pair == -1 else max(pair, 1),
    )


async def cohere_rerank(
    service: ScorerService,
    query: str,
    documents: list[Any],
    top_n: int | None,
    return_documents: bool,
    rank_fields: list[str] | None,
    version: str,
    truncation: Truncation | None = None,
) -> dict[str, Any]:
    """The Cohere response body for one request (both versions)."""
    check_value(query, "query")
    if not documents:
        raise ApiError(
            ErrorKind.BAD_REQUEST,
            "invalid request: list of documents must not be empty (send at least one "
            "document; nothing was scored or billed).",
            field="documents",
        )
    texts = document_texts(documents, rank_fields, return_documents)
    service.check_limits(query, texts, "documents")
    raw = await service.raw_scores(query, texts, "documents", truncation)
    scores = [sigmoid(x) for x in raw]
    order = best_first(scores)
    if top_n is not None:
        order = order[:top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if return_documents:
            item["document"] = returned_document(documents[i], texts[i])
        results.append(item)
    return {
        "id": str(uuid.uuid4()),
        "results": results,
        "meta": {
            "api_version": {"version": version},
            "billed_units": {"search_units": float(max(1, math.ceil(len(texts) / 100)))},
        },
    }


@router.post(
    "/v1/rerank",
    response_model=CohereRerankResponse,
    response_model_exclude_none=True,
    dependencies=[Depends(require_api_key)],
    summary="Rerank (Cohere v1 shape)",
)
async def rerank_v1(
    body: CohereV1RerankRequest, service: Annotated[ScorerService, Depends(get_service)]
) -> dict[str, Any]:
    """Cohere v1 rerank (``rank_fields`` picks the object fields scored)."""
    return await cohere_rerank(
        service,
        body.query,
        body.documents,
        body.top_n,
        body.return_documents,
        body.rank_fields,
        "1",
        token_limits(body),
    )


@router.post(
    "/v2/rerank",
    response_model=CohereRerankResponse,
    response_model_exclude_none=True,
    dependencies=[Depends(require_api_key)],
    summary="Rerank (Cohere v2 shape)",
)
async def rerank_v2(
    body: CohereV2RerankRequest, service: Annotated[ScorerService, Depends(get_service)]
) -> dict[str, Any]:
    """Cohere v2 rerank (object documents are scored on their ``text``)."""
    return await cohere_rerank(
        service,
        body.query,
        body.documents,
        body.top_n,
        body.return_documents,
        None,
        "2",
        token_limits(body),
    )
