"""Running tokenized pairs through a :class:`~.base.Runner`: pad, batch, halve on OOM, read scores.

Backend-neutral: the same loop serves every backend and any ``runner=`` a caller passes. Pairs
are grouped by :func:`bge_rerank_plugins.batching.plan_batches` (length-sorted, at most
``batch_size`` pairs and ``token_budget`` padded tokens per batch); a batch that runs out of
CUDA memory is halved and retried, and non-finite scores are an error, never returned silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ...batching import plan_batches
from ...errors import NonFiniteScoreError
from ..deadline import check_deadline

if TYPE_CHECKING:
    import torch

    from .base import Runner

__all__ = ["pad_batch", "run_batches"]

logger = logging.getLogger(__name__)


def pad_batch(
    rows: Sequence[Sequence[int]],
    token_types: Sequence[Sequence[int]] | None,
    pad_id: int | None,
    device: str,
) -> dict[str, torch.Tensor]:
    """The tensors a runner takes for these token rows, right-padded to the longest."""
    import torch

    longest = max(len(r) for r in rows)
    pad = 0 if pad_id is None else pad_id
    ids = torch.full((len(rows), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    types = torch.zeros((len(rows), longest), dtype=torch.long) if token_types else None
    for row, tokens in enumerate(rows):
        n = len(tokens)
        ids[row, :n] = torch.tensor(tokens)
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(token_types[row])  # type: ignore[index]
    tensors = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if types is not None:
        tensors["token_type_ids"] = types.to(device)
    return tensors


def run_batches(
    runner: Runner,
    score: Callable[[torch.Tensor], torch.Tensor],
    input_ids: list[list[int]],
    token_types: list[list[int]] | None,
    *,
    batch_size: int,
    token_budget: int | None,
    pad_id: int | None,
    device: str,
    lock: threading.RLock,
    progress: bool = False,
    model_name: str = "",
    backend: str = "torch",
) -> list[float]:
    """Raw scores of every tokenized pair, in input order.

    Args:
        runner: one padded batch -> logits.
        score: logits -> one raw score per row (the model family's rule).
        input_ids, token_types: the tokenized pairs (``token_types`` ``None`` when the model
            has none).
        batch_size, token_budget: most pairs and padded tokens per batch (``token_budget``
            ``None``: ``batch_size`` times the longest pair).
        pad_id, device: the tokenizer's padding id and where the tensors go.
        lock: held around each runner call (the model and its tokenizer are shared).
        progress: show a tqdm bar.
        model_name, backend: named in the error.

    Raises:
        DeadlineExceeded: inside :func:`~bge_rerank_plugins.runtime.deadline.deadline_scope`,
            before a batch that would end after the deadline (no scores are returned).
        NonFiniteScoreError: some score is NaN or infinite (after the torch runner's float32
            rescue); no scores are returned, since a NaN would sort arbitrarily.
    """
    import torch

    lengths = [len(ids) for ids in input_ids]
    budget = token_budget or batch_size * max(max(lengths), 1)
    out: list[float] = [0.0] * len(input_ids)
    non_finite = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(input_ids), desc="Scoring pairs", unit="pair")

    def one(batch: list[int]) -> int:
        tensors = pad_batch(
            [input_ids[i] for i in batch],
            [token_types[i] for i in batch] if token_types else None,
            pad_id,
            device,
        )
        try:
            with lock:
                logits = runner(tensors)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            half = len(batch) // 2
            logger.warning(
                "Out of memory on a batch of %d pairs; retrying as two batches of %d and %d.",
                len(batch),
                half,
                len(batch) - half,
            )
            return one(batch[:half]) + one(batch[half:])
        scores = score(logits)
        finite = torch.isfinite(scores)
        for i, value in zip(batch, scores.float().cpu().tolist()):
            out[i] = value
        return int(finite.numel() - finite.sum().item())

    try:
        with torch.inference_mode():
            last = 0.0  # a deadline set by the caller (runtime.deadline) stops at a boundary
            for batch in plan_batches(lengths, batch_size, budget):
                check_deadline(last)
                started = time.monotonic()
                non_finite += one(batch)
                last = time.monotonic() - started
                if bar is not None:
                    bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    if non_finite:
        precision = getattr(runner, "precision", f"with backend={backend!r} in float32")
        raise NonFiniteScoreError(
            f"model={model_name!r} gave a NaN or infinite score to {non_finite} of "
            f"{len(input_ids)} pairs ({precision}). The weights are most likely broken: a "
            "fine-tuning run that diverged, a bad conversion or a corrupt file. Check the "
            "model on a few pairs with dtype='float32', and retrain or re-export it; no "
            "scores were returned, since a NaN would sort arbitrarily."
        )
    return out
