"""``POST /score`` and ``/v1/score`` (vLLM's score API, also what Jina-style clients call) and
``GET /v1/models`` (OpenAI's model list, which vLLM clients read to find the served name).

``text_1`` is scored against each ``text_2``: a string against a list, a one-item list broadcast
against a list, or two lists of one length paired item by item. Scores come back in input order
(not sorted), as sigmoid scores unless ``use_activation`` is false (raw logits).
``max_tokens_per_doc``, ``max_tokens_per_query`` and ``truncate_prompt_tokens`` are honoured
(:mod:`..truncation`), with ``text_1`` as the query.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from ...scorer import sigmoid
from ..auth import require_api_key
from ..checks import check_value
from ..errors import ApiError, ErrorKind
from ..schemas import ModelList, ScoreRequest, ScoreResponse
from ..service import ScorerService, get_service
from ..truncation import pair_token_counts
from .cohere import token_limits

__all__ = ["list_models", "router", "score", "score_pairs"]

router = APIRouter()

#: When this process started (the ``created`` time of the served model in ``/v1/models``).
STARTED = int(time.time())


def score_pairs(text_1: str | list[str], text_2: str | list[str]) -> list[tuple[str, str]]:
    """The (query, text) pairs a score request names, as vLLM pairs them; 400 if they do not
    pair up.

    >>> score_pairs("q", ["a", "b"])
    [('q', 'a'), ('q', 'b')]
    >>> score_pairs(["q1", "q2"], ["a", "b"])
    [('q1', 'a'), ('q2', 'b')]
    """
    firsts = [text_1] if isinstance(text_1, str) else list(text_1)
    seconds = [text_2] if isinstance(text_2, str) else list(text_2)
    if not firsts or not seconds:
        field = "text_1" if not firsts else "text_2"
        raise ApiError(ErrorKind.BAD_REQUEST, f"{field} must not be empty.", field=field)
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    if len(firsts) != len(seconds):
        raise ApiError(
            ErrorKind.BAD_REQUEST,
            f"text_1 has {len(firsts)} items and text_2 {len(seconds)}: send one text_1, or "
            "lists of the same length (text_1[i] is scored against text_2[i]).",
            field="text_1",
        )
    return list(zip(firsts, seconds))


@router.post(
    "/v1/score",
    response_model=ScoreResponse,
    dependencies=[Depends(require_api_key)],
    summary="Score pairs (vLLM shape)",
)
@router.post(
    "/score",
    response_model=ScoreResponse,
    dependencies=[Depends(require_api_key)],
    summary="Score pairs (vLLM shape)",
)
# (decorators apply bottom up: /score is registered first)
async def score(
    body: ScoreRequest, service: Annotated[ScorerService, Depends(get_service)]
) -> dict[str, Any]:
    """One score per (text_1, text_2) pair, in input order."""
    pairs = score_pairs(body.text_1, body.text_2)
    for i, (query, text) in enumerate(pairs):
        check_value(query, "text_1" if isinstance(body.text_1, str) else f"text_1[{i}]")
        check_value(text, f"text_2[{i}]")
    queries = sorted({q for q, _ in pairs})
    service.check_limits(pairs[0][0], [t for _, t in pairs], "text_2")
    for query in queries:
        service.check_limits(query, [], "text_1")
    rule = token_limits(body)
    cut: list[tuple[str, str]] = list(pairs)
    for query in queries:  # truncation is per query: it keeps the query over the texts
        rows = [i for i, (q, _) in enumerate(pairs) if q == query]
        new_query, texts = await service.truncated(
            query, [pairs[i][1] for i in rows], rule, "text_2"
        )
        for i, text in zip(rows, texts):
            cut[i] = (new_query, text)
    raw = await service.raw_pair_scores(cut, "text_2")
    scores = raw if body.use_activation is False else [sigmoid(x) for x in raw]
    tokens = await asyncio.to_thread(pair_token_counts, service.scorer, cut)
    config = service.config
    return {
        "id": f"score-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": config.served_model_name or config.model,
        "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }


@router.get(
    "/v1/models",
    response_model=ModelList,
    response_model_exclude_none=True,
    dependencies=[Depends(require_api_key)],
    summary="The served model (OpenAI list shape)",
)
async def list_models(service: Annotated[ScorerService, Depends(get_service)]) -> dict[str, Any]:
    """The one served model, named as requests may name it."""
    config = service.config
    scorer = service.scorer
    return {
        "object": "list",
        "data": [
            {
                "id": config.served_model_name or config.model,
                "object": "model",
                "created": STARTED,
                "owned_by": "bge-rerank-plugins",
                "root": config.model,
                "max_model_len": scorer.model_max_length if scorer is not None else None,
            }
        ],
    }
