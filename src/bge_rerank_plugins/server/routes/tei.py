"""``POST /rerank``: Hugging Face text-embeddings-inference (TEI) shape."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from ...fields import best_first
from ...scorer import sigmoid
from ..auth import require_api_key
from ..checks import check_value
from ..schemas import TEIRank, TEIRerankRequest
from ..service import ScorerService, get_service
from ..truncation import Truncation

__all__ = ["rerank_tei", "router"]

router = APIRouter()


@router.post(
    "/rerank",
    response_model=list[TEIRank],
    response_model_exclude_none=True,
    dependencies=[Depends(require_api_key)],
    summary="Rerank (text-embeddings-inference shape)",
)
async def rerank_tei(
    body: TEIRerankRequest, service: Annotated[ScorerService, Depends(get_service)]
) -> list[dict[str, Any]]:
    """Score ``texts`` against ``query``, best first (sigmoid scores unless ``raw_scores``).

    ``truncate=false`` refuses a pair longer than the model's limit (413, TEI's status, naming
    the text); ``truncation_direction="left"`` cuts the start of a passage instead of its end.
    """
    check_value(body.query, "query")
    for i, text in enumerate(body.texts):
        check_value(text, f"texts[{i}]")
    service.check_limits(body.query, body.texts, "texts")
    truncation = Truncation(
        truncate=body.truncate is not False, left=body.truncation_direction == "left"
    )
    raw = await service.raw_scores(body.query, body.texts, "texts", truncation)
    scores = raw if body.raw_scores else [sigmoid(x) for x in raw]
    out = []
    for i in best_first(scores):
        item: dict[str, Any] = {"index": i, "score": scores[i]}
        if body.return_text:
            item["text"] = body.texts[i]
        out.append(item)
    return out
