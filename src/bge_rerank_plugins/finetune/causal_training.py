"""The training side of :mod:`.causal`: pairs to batches, the grouped loss, the trainer, LoRA.

* :func:`encode_pairs`: every (query, passage) pair the groups can draw, tokenized once by the
  scorer's encoder for the family;
* :class:`GroupCollator`: groups -> one left-padded batch of their pairs and the group sizes;
* :func:`grouped_softmax_loss`: FlagEmbedding's decoder-only objective, a softmax
  cross-entropy over each group with the positive (first) as target;
* :func:`family_scorer`: the family's score at each row's last token, as the scorer reads it;
* :func:`make_trainer`: a Hugging Face ``Trainer`` whose loss is that objective;
* :func:`wrap_lora`: the ``peft`` LoRA adapters on the causal LM.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "GroupCollator",
    "encode_pairs",
    "family_scorer",
    "grouped_softmax_loss",
    "make_trainer",
    "wrap_lora",
]

logger = logging.getLogger(__name__)

#: The projections that get LoRA adapters by default (FlagEmbedding's decoder-only default);
#: those a model does not have are skipped.
DEFAULT_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


def encode_pairs(encoder: Any, rows: Any) -> dict[tuple[str, str], list[int]]:
    """Token ids of every (query, passage) pair the groups can draw, tokenized once up front
    (one truncation warning for the whole data, not one per batch)."""
    pairs: dict[tuple[str, str], None] = {}
    for row in rows:
        for doc in (*row.docs, *(row.pool or ())):
            pairs[(row.query, doc)] = None
    items = list(pairs)
    encoded = encoder.encode(items)
    logger.info(
        "Tokenized %d pairs at max_length=%d (%d truncated).",
        len(items),
        encoded["max_length"],
        encoded["truncated"],
    )
    return dict(zip(items, encoded["input_ids"]))


class GroupCollator:
    """Groups -> one left-padded batch of all their pairs, plus each group's size."""

    def __init__(self, ids: Mapping[tuple[str, str], list[int]], pad_id: int) -> None:
        self.ids = ids
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        sequences = [self.ids[(row["query"], doc)] for row in rows for doc in row["docs"]]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            # Left padding: every row's last real token sits at the last position.
            input_ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
        # Positions count real tokens only, as for an unpadded row when scoring.
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        sizes = torch.tensor([len(row["docs"]) for row in rows], dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": positions,
            "group_sizes": sizes,
        }


def grouped_softmax_loss(scores: Any, sizes: Any) -> Any:
    """Mean cross-entropy of each group's softmax with its first entry (the positive) as target.

    ``scores`` holds the groups one after another; ``sizes`` their lengths (groups may differ:
    a query with few negatives). Missing entries of a short group count as -inf.

    >>> import torch
    >>> loss = grouped_softmax_loss(torch.tensor([2.0, 0.0, 1.0, 1.0]), torch.tensor([2, 2]))
    >>> round(float(loss), 4)
    0.41
    """
    import torch

    counts = [int(n) for n in sizes]
    width = max(counts)
    grid = scores.new_full((len(counts), width), float("-inf"))
    start = 0
    for row, count in enumerate(counts):
        grid[row, :count] = scores[start : start + count]
        start += count
    target = torch.zeros(len(counts), dtype=torch.long, device=scores.device)
    return torch.nn.functional.cross_entropy(grid.float(), target)


def make_trainer(network: Any, args: Any, dataset: Any, collator: Any, score: Any) -> Any:
    """A ``Trainer`` on ``dataset`` (rows ``query``, ``docs``) whose loss is
    :func:`grouped_softmax_loss` of ``score(model, batch)``; its log lines go to ``logging``."""
    from transformers import PrinterCallback, Trainer, TrainerCallback

    class _LogToLogging(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if logs:
                logger.info("step %d: %s", state.global_step, logs)

    class _GroupedTrainer(Trainer):
        # compute_loss returns the mean over its groups: the Trainer divides by the
        # gradient-accumulation steps itself.
        loss_is_scaled_for_ga = False

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            sizes = inputs.pop("group_sizes")
            scores = score(model, inputs)
            loss = grouped_softmax_loss(scores, sizes)
            if not bool(loss.detach().isfinite()):
                from ..errors import RerankerError

                raise RerankerError(
                    f"Training stopped at step {self.state.global_step}: the loss is not "
                    "finite, so nothing was saved. Lower learning_rate, or train in "
                    "dtype='float32'."
                )
            return (loss, {"scores": scores}) if return_outputs else loss

    trainer = _GroupedTrainer(
        model=network, args=args, train_dataset=dataset, data_collator=collator
    )
    # The trainer prints its logs when the progress bar is off: send them to logging instead.
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_LogToLogging())
    return trainer


def family_scorer(token_ids: list[int], family_score: Any) -> Any:
    """``score(model, inputs)``: the family's score at each row's last (real) token."""

    def score(model: Any, inputs: dict[str, Any]) -> Any:
        # logits_to_keep=1: the LM head runs at the last position only (a 256k vocabulary).
        out = model(**inputs, logits_to_keep=1, use_cache=False)
        return family_score(out.logits[:, -1, token_ids])

    return score


def wrap_lora(network: Any, options: dict[str, Any]) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    options = dict(options)
    if "target_modules" not in options:
        present = {name.rsplit(".", 1)[-1] for name, _ in network.named_modules()}
        options["target_modules"] = [m for m in DEFAULT_TARGET_MODULES if m in present]
        if not options["target_modules"]:
            raise ValueError(
                "the model has none of the projections LoRA targets by default "
                f"({DEFAULT_TARGET_MODULES}); pass lora={{'target_modules': [...]}}."
            )
    try:
        config = LoraConfig(task_type=TaskType.CAUSAL_LM, **options)
    except TypeError as error:
        raise TypeError(f"lora: {error} (the keys are peft.LoraConfig arguments).") from None
    wrapped = get_peft_model(network, config)
    trainable, total = wrapped.get_nb_trainable_parameters()
    logger.info(
        "LoRA r=%s alpha=%s on %s: %d of %d parameters trained.",
        config.r,
        config.lora_alpha,
        sorted(config.target_modules),
        trainable,
        total,
    )
    return wrapped
