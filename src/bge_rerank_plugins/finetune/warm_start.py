"""A warm start for a base model whose head knows nothing yet: the base encoder's own similarity,
blended with BM25.

A cross-encoder built from a bi-encoder (e.g. all-MiniLM-L6-v2's encoder with a fresh
classification head) ranks at chance before training, yet its encoder, read as a bi-encoder
(mean of the last hidden states, cosine), already ranks passages well, and BM25 over the
training passages ranks them well in another way: the two disagree where each is weak, so their
blend ranks better than either (on SciFact train, reranking the BM25 top 30: BM25 0.663, the
encoder's cosine 0.676, their min-max blend at weight 0.5 0.708 nDCG@10). The engine measures
the base model and this teacher on its held-out queries; when the head is at chance and the
teacher is clearly better, it scores every training passage with the teacher and distils from
it in a warm-start phase, then the requested epochs run (:mod:`.phases`). :func:`decide` makes
that call and says why.

>>> decide("auto", base=0.51, teacher=0.80, random=0.50).use
True
>>> decide("auto", base=0.90, teacher=0.80, random=0.50).reason
'the base model already ranks the held-out queries (nDCG@10 0.900 vs 0.500 at random)'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .data import TrainingGroup

__all__ = [
    "BLEND_SCALE",
    "BLEND_WEIGHT",
    "MARGIN",
    "SCALE",
    "OwnEncoder",
    "WarmStart",
    "blended_teacher_scores",
    "decide",
    "own_teacher_scores",
]

logger = logging.getLogger(__name__)

#: nDCG@10 above the random order below which a head counts as untrained, and by which the
#: encoder's similarity must beat the base model to be worth a warm start.
MARGIN = 0.05
#: Cosines are multiplied by this before the teacher's softmax (the usual contrastive scale).
SCALE = 20.0
#: the blended teacher's weight of the encoder's cosine (1 - it: BM25's), both min-max scaled
#: within each group (chosen on SciFact train: 0.5 0.708, 0.6 0.710, 0.4 0.701 nDCG@10)
BLEND_WEIGHT = 0.5
#: the blend (in [0, 1] within a group) times this is the teacher's logit: the spread that
#: ``SCALE`` x cosine has over a group of 1 positive + 4 BM25 negatives (median 7.7 on SciFact)
BLEND_SCALE = 8.0


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
        base, teacher, random: held-out nDCG@10 of the base model, of the teacher
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
            f"teacher (the encoder's own similarity blended with BM25) ranks no better "
            f"({shown}); train from the labels alone",
        )
    return WarmStart(
        True,
        f"the head is untrained (held-out nDCG@10 {base:.3f}, {random:.3f} at random) and the "
        f"teacher (the base encoder's own similarity blended with BM25) ranks well "
        f"({teacher:.3f})",
    )


class OwnEncoder:
    """The body of a sentence-transformers ``CrossEncoder`` read as a bi-encoder.

    It has sentence-transformers' ``encode`` API, so
    :func:`~bge_rerank_plugins.finetune.teachers.biencoder_teacher_scores` turns it into teacher
    scores: the mean of the body's (``base_model``) last hidden states over the real tokens.
    """

    def __init__(self, model: Any, max_length: int) -> None:
        self.model = model
        self.max_length = max_length
        self.device = next(model.model.parameters()).device

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 32, **_: Any
    ) -> Any:  # ``normalize_embeddings``/``show_progress_bar``: the caller normalises, no bar
        import numpy as np
        import torch

        hf_model = self.model.model
        encoder = getattr(hf_model, "base_model", hf_model)
        # by length: batches of similar lengths pad little
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), hf_model.config.hidden_size), dtype=np.float32)
        was_training = encoder.training
        encoder.eval()
        try:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = self.model.tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                with torch.no_grad():
                    hidden = encoder(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                out[rows] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).cpu().numpy()
        finally:
            encoder.train(was_training)
        return out


def own_teacher_scores(
    groups: Sequence[TrainingGroup], model: Any, *, max_length: int, precision: str
) -> list[TrainingGroup]:
    """``groups`` carrying ``SCALE`` x the cosine of ``model``'s own encoder as teacher scores
    (a NaN or infinite embedding is an error naming the group)."""
    from .teachers import biencoder_teacher_scores

    # training's "fp16" never runs on a CPU; the teacher then encodes in float32 as well
    chosen = precision if precision in ("auto", "fp32", "bf16") else "fp32"
    return biencoder_teacher_scores(
        groups, OwnEncoder(model, max_length), scale=SCALE, precision=chosen
    )


def blended_teacher_scores(
    groups: Sequence[TrainingGroup],
    model: Any,
    *,
    corpus: Sequence[str],
    max_length: int,
    precision: str,
    weight: float = BLEND_WEIGHT,
) -> list[TrainingGroup]:
    """``groups`` carrying the blend of ``model``'s own cosine and BM25 as teacher scores.

    Within each group both are min-max scaled, blended (``weight`` x cosine + (1 - ``weight``)
    x BM25) and multiplied by ``BLEND_SCALE``. BM25 indexes ``corpus`` (every training
    passage) and the groups' passages. Without ``bm25s`` installed, the cosine alone
    (:func:`own_teacher_scores`), with a warning.
    """
    from ..fusion import minmax

    scored = own_teacher_scores(groups, model, max_length=max_length, precision=precision)
    try:
        from .holdout import bm25_list_scores

        lexical = bm25_list_scores(
            [g.query for g in scored], [[*g.positives, *g.negatives] for g in scored], corpus
        )
    except ImportError as error:
        logger.warning("Warm start: %s; the teacher is the encoder's cosine alone.", error)
        return scored
    out = []
    for group, bm25 in zip(scored, lexical):
        cosine = [*group.positive_scores, *group.negative_scores]
        blend = [
            round(BLEND_SCALE * (weight * c + (1 - weight) * b), 6)
            for c, b in zip(minmax(cosine), minmax(bm25))
        ]
        k = len(group.positives)
        out.append(
            TrainingGroup(
                group.query,
                group.positives,
                group.negatives,
                positive_scores=tuple(blend[:k]),
                negative_scores=tuple(blend[k:]),
            )
        )
    return out
