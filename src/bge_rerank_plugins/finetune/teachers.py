"""Teacher scores for distillation (``loss="distill"``) from a bi-encoder.

A cross-encoder with a fresh classification head starts out knowing nothing about relevance,
while the bi-encoder it was built from (e.g. all-MiniLM-L6-v2) already ranks passages well. Its
cosine similarity for every passage of a training group, used as teacher scores, gives the
cross-encoder a signal on all the group's negatives instead of only "which one is the positive".
On SciFact this was the best recipe measured (docs/finetuning.md).

Example:
    >>> from bge_rerank_plugins.finetune import TrainingGroup
    >>> from bge_rerank_plugins.finetune.teachers import biencoder_teacher_scores
    >>> class Encoder:  # any object with sentence-transformers' ``encode`` works
    ...     def encode(self, texts, **_):
    ...         import numpy as np
    ...         return np.array([[1.0, 0.0] if "cat" in t else [0.0, 1.0] for t in texts])
    >>> groups = [TrainingGroup("cat food", ["cat kibble"], ["dog bowl"])]
    >>> scored = biencoder_teacher_scores(groups, Encoder(), scale=10)
    >>> scored[0].positive_scores, scored[0].negative_scores
    ((10.0,), (0.0,))
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from .data import TrainingGroup, load_training_data

__all__ = ["biencoder_teacher_scores"]

logger = logging.getLogger(__name__)


def biencoder_teacher_scores(
    groups: Sequence[Any],
    model: Any,
    *,
    scale: float = 20.0,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    precision: str = "auto",
) -> list[TrainingGroup]:
    """Attach ``scale`` x cosine(query, passage) of a bi-encoder as teacher scores.

    Args:
        groups: training data in any format :func:`~.data.load_training_data` reads
            (``TrainingGroup``, FlagEmbedding records, triplets, pointwise rows, ...).
        model: a ``sentence_transformers.SentenceTransformer`` (or anything with its ``encode``),
            or a path / Hub id to load one from on the CPU.
        scale: multiplies the cosine; the teacher's softmax over a group is taken of these
            values, so 20 (the usual contrastive-training scale) turns cosine gaps of a few
            hundredths into a clear preference.
        batch_size: encoding batch size.
        show_progress_bar: tqdm bars while encoding (default: when there are over 1,000
            passages).
        precision: ``"auto"`` encodes under bfloat16 autocast when the model runs on a CPU with
            bf16 hardware (AVX512-BF16 or AMX: about 1.6x faster, cosines within about 1e-2),
            float32 otherwise; ``"fp32"`` or ``"bf16"`` force one.

    Returns:
        New :class:`~bge_rerank_plugins.finetune.data.TrainingGroup` records carrying
        ``positive_scores`` and ``negative_scores`` (any previous scores are replaced). Each
        distinct text is encoded once.

    Raises:
        ValueError: ``scale`` is not positive, ``precision`` is unknown, a record is malformed,
            or the model gives a NaN or infinite embedding (the group and passage are named;
            such a teacher score would make the distillation loss NaN).
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    import contextlib

    import numpy as np
    import torch

    from .recipe import cpu_bf16_autocast

    records = load_training_data(list(groups), name="groups")
    if isinstance(model, (str, os.PathLike)):  # str has an ``encode`` of its own
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(model), device="cpu")
    texts = sorted({t for g in records for t in (*g.positives, *g.negatives)})
    queries = sorted({g.query for g in records})
    progress = len(texts) > 1000 if show_progress_bar is None else show_progress_bar
    on_cpu = str(getattr(model, "device", "cpu")).startswith("cpu")
    bf16 = on_cpu and cpu_bf16_autocast(precision)

    def encode(items: list[str]) -> Any:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            raw = model.encode(
                items,
                batch_size=batch_size,
                normalize_embeddings=True,
                show_progress_bar=progress,
            )
        vectors = np.asarray(raw, dtype=np.float32)
        # normalise again: a custom encoder may ignore normalize_embeddings
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    logger.info("Encoding %d passages and %d queries for teacher scores.", len(texts), len(queries))
    passage_vectors = dict(zip(texts, encode(texts)))
    query_vectors = dict(zip(queries, encode(queries)))
    out = []
    for index, group in enumerate(records):
        q = query_vectors[group.query]

        def scores(items: Sequence[str], q: Any = q, index: int = index) -> tuple[float, ...]:
            values = tuple(round(float(scale * passage_vectors[t] @ q), 6) for t in items)
            for text, value in zip(items, values):
                if not math.isfinite(value):
                    raise ValueError(
                        f"training group {index} (query {records[index].query!r:.60}): the "
                        f"teacher score of passage {text!r:.60} is {value} (the model gave a NaN "
                        "or infinite embedding); check the teacher model (precision='fp32')"
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
