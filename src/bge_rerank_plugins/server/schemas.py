"""Request and response bodies of the rerank endpoints (pydantic models).

Two wire formats are served, so clients written for other servers work unchanged:

* ``POST /rerank``: Hugging Face text-embeddings-inference (TEI).
* ``POST /v1/rerank`` and ``POST /v2/rerank``: Cohere's rerank API (also what Jina and most hosted
  rerank services accept).

Unknown request fields are ignored (clients send options such as ``truncation_direction`` or
``max_tokens_per_doc`` that this server has no use for); every pair is truncated to the model's
``max_length`` with the query kept, whatever ``truncate`` says.

>>> TEIRerankRequest(query="q", texts=["a", "b"]).raw_scores
False
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ApiMeta",
    "ApiVersion",
    "BilledUnits",
    "CohereDocument",
    "CohereRerankResponse",
    "CohereResult",
    "CohereV1RerankRequest",
    "CohereV2RerankRequest",
    "ErrorResponse",
    "TEIRank",
    "TEIRerankRequest",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------------------- TEI
class TEIRerankRequest(_Request):
    """Body of ``POST /rerank`` (TEI)."""

    query: str = Field(description="The search query.")
    texts: list[str] = Field(description="Passages to score against the query.")
    raw_scores: bool = Field(
        default=False, description="Return raw logits instead of sigmoid scores in [0, 1]."
    )
    return_text: bool = Field(default=False, description="Echo each passage as `text`.")
    truncate: bool | None = Field(
        default=None,
        description="Accepted for TEI compatibility; pairs are always truncated to max_length.",
    )


class TEIRank(BaseModel):
    """One item of the ``POST /rerank`` response (a JSON list sorted by score, best first)."""

    index: int
    score: float
    text: str | None = None


# ---------------------------------------------------------------------------- Cohere
class CohereV1RerankRequest(_Request):
    """Body of ``POST /v1/rerank``: documents are strings or objects with a ``text`` field."""

    query: str
    documents: list[str | dict[str, Any]]
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1)
    rank_fields: list[str] | None = Field(
        default=None,
        description="Fields of object documents to score, joined by newlines in this order "
        "(default: `text`).",
    )
    return_documents: bool = False


class CohereV2RerankRequest(_Request):
    """Body of ``POST /v2/rerank``: documents are strings."""

    query: str
    documents: list[str | dict[str, Any]]
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False


class CohereDocument(BaseModel):
    """A returned document: ``{"text": ...}`` plus, for v1 object documents, their other fields."""

    model_config = ConfigDict(extra="allow")
    text: str


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: CohereDocument | None = None


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: float


class ApiMeta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits


class CohereRerankResponse(BaseModel):
    """Response of ``/v1/rerank`` and ``/v2/rerank``: results sorted best first."""

    id: str
    results: list[CohereResult]
    meta: ApiMeta


# ---------------------------------------------------------------------------- errors
class ErrorResponse(BaseModel):
    """Error body: ``error`` (TEI's key) and ``message`` (Cohere's key) hold the same text."""

    error: str
    message: str
    error_type: str
    field: str | None = None
