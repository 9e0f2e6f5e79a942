"""A warm start for a base model whose head knows nothing yet: the base encoder's own similarity.

A cross-encoder built from a bi-encoder (e.g. all-MiniLM-L6-v2's encoder with a fresh
classification head) ranks at chance before training, yet its encoder, read as a bi-encoder
(mean of the last hidden states, cosine), already ranks passages well. The engine measures both
on its held-out queries; when the head is at chance and the encoder's similarity is clearly
better, it scores every training passage with that similarity and distils from it: a
warm-start phase on short pairs first, then the requested epochs (:mod:`.phases`).
:func:`decide` makes that call and says why.

>>> decide("auto", base=0.51, teacher=0.80, random=0.50).use
True
>>> decide("auto", base=0.90, teacher=0.80, random=0.50).reason
'the base model already ranks the held-out queries (nDCG@10 0.900 vs 0.500 at random)'
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .data import TrainingGroup

__all__ = ["MARGIN", "SCALE", "WarmStart", "decide", "encoder_similarity", "with_teacher_scores"]

logger = logging.getLogger(__name__)

#: nDCG@10 above the random order below which a head counts as untrained, and by which the
#: encoder's similarity must beat the base model to be worth a warm start.
MARGIN = 0.05
#: Cosines are multiplied by this before the teacher's softmax (the usual contrastive scale).
SCALE = 20.0


@dataclass(frozen=True)
class WarmStart:
    """The warm-start decision: whether to use it, and why (for the log)."""

    use: bool
    reason: str


def decide(
    option: bool | str, *, base: float | None, teacher: float | None, random: float | None
) -> WarmStart:
    """Whether to warm-start from the encoder's own similarity.

    Args:
        option: the engine's ``warm_start``: True, False or "auto".
        base, teacher, random: held-out nDCG@10 of the base model, of the encoder's similarity
            and of a random order (None: not measured).
    """
    if option is False:
        return WarmStart(False, "warm_start=False")
    if option is True:
        return WarmStart(True, "warm_start=True")
    if base is None or random is None:
        return WarmStart(False, "no held-out queries to tell whether the head is trained")
    if base > random + MARGIN:
        return WarmStart(
            False,
            f"the base model already ranks the held-out queries (nDCG@10 {base:.3f} vs "
            f"{random:.3f} at random)",
        )
    if teacher is None or teacher < max(base, random) + MARGIN:
        shown = "n/a" if teacher is None else f"{teacher:.3f}"
        return WarmStart(
            False,
            f"the head is untrained (nDCG@10 {base:.3f}, {random:.3f} at random) but the "
            f"encoder's own similarity ranks no better ({shown}); train from the labels alone",
        )
    return WarmStart(
        True,
        f"the head is untrained (held-out nDCG@10 {base:.3f}, {random:.3f} at random) and the "
        f"base encoder's own similarity ranks well ({teacher:.3f})",
    )


def encoder_similarity(
    model: Any,
    queries: Sequence[str],
    passages: Sequence[str],
    *,
    max_length: int,
    bf16: bool = False,
    batch_size: int = 32,
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Unit vectors of ``queries`` and ``passages`` from the encoder of a ``CrossEncoder``.

    The encoder is the sequence classifier's body (``base_model``): the mean of its last hidden
    states over the real tokens, normalised. Returns the query vectors, the passage vectors (by
    text) and the seconds it took.
    """
    import torch

    hf_model = model.model
    encoder = getattr(hf_model, "base_model", hf_model)
    tokenizer = model.tokenizer
    device = next(hf_model.parameters()).device
    started = time.perf_counter()
    was_training = encoder.training
    encoder.eval()

    def embed(texts: Sequence[str]) -> dict[str, Any]:
        unique = list(dict.fromkeys(texts))
        # sorted by length: batches of similar lengths pad little
        unique.sort(key=len)
        out: dict[str, Any] = {}
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        for start in range(0, len(unique), batch_size):
            chunk = unique[start : start + batch_size]
            batch = tokenizer(
                chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            with torch.no_grad(), autocast:
                hidden = encoder(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            vectors = torch.nn.functional.normalize(mean, dim=-1).cpu().numpy()
            out.update(zip(chunk, vectors))
        return out

    try:
        query_vectors = embed(queries)
        passage_vectors = embed(passages)
    finally:
        encoder.train(was_training)
    return query_vectors, passage_vectors, time.perf_counter() - started


def with_teacher_scores(
    groups: Sequence[TrainingGroup],
    query_vectors: dict[str, Any],
    passage_vectors: dict[str, Any],
    *,
    scale: float = SCALE,
) -> list[TrainingGroup]:
    """``groups`` carrying ``scale`` x cosine as teacher scores (a non-finite one is an error)."""
    out = []
    for index, group in enumerate(groups):
        q = query_vectors[group.query]

        def scores(texts: Sequence[str], q: Any = q, index: int = index) -> tuple[float, ...]:
            values = tuple(round(float(scale * (passage_vectors[t] @ q)), 6) for t in texts)
            if not all(math.isfinite(v) for v in values):
                raise ValueError(
                    f"training group {index}: the base encoder gave a NaN or infinite embedding; "
                    "use warm_start=False or precision='fp32'."
                )
            return values

        out.append(
            TrainingGroup(
                group.query,
                group.positives,
                group.negatives,
                positive_scores=scores(group.positives),
                negative_scores=scores(group.negatives),
            )
        )
    return out


def similarity_rows(
    items: Sequence[Any], query_vectors: dict[str, Any], passage_vectors: dict[str, Any]
) -> list[list[float]]:
    """Cosine of each held-out item's passages (to rank them with :func:`~.holdout.pool_ndcg`)."""
    return [
        [float(passage_vectors[d] @ query_vectors[item.query]) for d in item.docs] for item in items
    ]
