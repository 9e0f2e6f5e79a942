"""Request and response bodies of the rerank endpoints (pydantic models).

Two wire formats are served, so clients written for other servers work unchanged:

* ``POST /rerank``: Hugging Face text-embeddings-inference (TEI).
* ``POST /v1/rerank`` and ``POST /v2/rerank``: Cohere's rerank API (also what Jina and most hosted
  rerank services accept).

* ``POST /score`` and ``POST /v1/score``: vLLM's score API (``text_1`` against ``text_2``).

Every client's truncation knob is honoured (TEI's ``truncate`` and ``truncation_direction``,
Cohere v2's ``max_tokens_per_doc``, vLLM's ``max_tokens_per_doc``, ``max_tokens_per_query`` and
``truncate_prompt_tokens``: :mod:`.truncation`); the query is always kept over the passage.
Other unknown request fields are ignored.

>>> TEIRerankRequest(query="q", texts=["a", "b"]).raw_scores
False
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    "ModelCard",
    "ModelList",
    "ScoreData",
    "ScoreRequest",
    "ScoreResponse",
    "ScoreUsage",
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
        description="false: a pair longer than the model's limit is refused (413) instead of "
        "cut; null/true: the passage is cut (the query kept).",
    )
    truncation_direction: str = Field(
        default="right",
        description="`right` cuts the end of a passage, `left` its start (TEI sends `Right` / "
        "`Left`); the query is kept either way.",
    )

    @field_validator("truncation_direction")
    @classmethod
    def _direction(cls, value: str) -> str:
        if value.lower() not in ("left", "right"):
            raise ValueError(f"must be 'left' or 'right' (any case), got {value!r}")
        return value.lower()


class _TokenLimits(_Request):
    """The truncation knobs Cohere v2 and vLLM send with a rerank or score request."""

    max_tokens_per_doc: int | None = Field(
        default=None, ge=1, description="Keep at most this many tokens of each document."
    )
    max_tokens_per_query: int | None = Field(
        default=None, ge=1, description="Keep at most this many tokens of the query (vLLM)."
    )
    truncate_prompt_tokens: int | None = Field(
        default=None,
        ge=-1,
        description="At most this many tokens per (query, document) pair; -1: the model's limit "
        "(vLLM).",
    )
    truncation_side: Literal["left", "right"] | None = Field(
        default=None,
        description="vLLM: `left` cuts the start of a document instead of its end (the query is "
        "kept either way).",
    )


class TEIRank(BaseModel):
    """One item of the ``POST /rerank`` response (a JSON list sorted by score, best first)."""

    index: int
    score: float
    text: str | None = None


# ---------------------------------------------------------------------------- Cohere
class CohereV1RerankRequest(_TokenLimits):
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


class CohereV2RerankRequest(_TokenLimits):
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


# ---------------------------------------------------------------------------- vLLM, OpenAI
class ScoreRequest(_TokenLimits):
    """Body of ``POST /score`` (vLLM): one text_1 against each text_2, or text_1[i] against
    text_2[i] when both are lists of one length (a one-item text_1 list is broadcast)."""

    model: str | None = None
    text_1: str | list[str]
    text_2: str | list[str]
    use_activation: bool | None = Field(
        default=None, description="false: raw logits; null/true: sigmoid scores in [0, 1]."
    )


class ScoreData(BaseModel):
    index: int
    object: str = "score"
    score: float


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ScoreResponse(BaseModel):
    """Response of ``POST /score``: one score per pair, in input order."""

    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str
    root: str
    max_model_len: int | None = None


class ModelList(BaseModel):
    """Response of ``GET /v1/models`` (OpenAI's list shape)."""

    object: str = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------------------- errors
class ErrorResponse(BaseModel):
    """Error body: ``error`` (TEI's key) and ``message`` (Cohere's key) hold the same text."""

    error: str
    message: str
    error_type: str
    field: str | None = None
