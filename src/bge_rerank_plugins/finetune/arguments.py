"""What a :class:`~bge_rerank_plugins.finetune.recipe.FinetuneConfig` turns into for training.

:func:`training_arguments` (the ``CrossEncoderTrainingArguments`` keyword arguments, precision
included: :func:`mixed_precision`, :func:`cpu_bf16_autocast`) and :func:`pick_max_length`
(``max_length="auto"``: the 95th-percentile rule of :func:`bge_rerank_plugins.tokenization.
p95_length` rounded to 16, at least 32, at most 192 on CPU and 512 elsewhere).
:mod:`~bge_rerank_plugins.finetune.recipe` re-exports every name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..runtime.device import cpu_has_native_bf16

__all__ = [
    "AUTO_MAX_LENGTH",
    "AUTO_MAX_LENGTH_CPU",
    "BEST_METRIC",
    "cpu_bf16_autocast",
    "mixed_precision",
    "pick_max_length",
    "training_arguments",
]

logger = logging.getLogger(__name__)

#: Caps of ``max_length="auto"``: on CPU (where attention cost dominates) and elsewhere.
AUTO_MAX_LENGTH_CPU = 192
AUTO_MAX_LENGTH = 512
# the engine's numbers for the 95th-percentile rule
_AUTO_MULTIPLE = 16
_AUTO_FLOOR = 32


def cpu_bf16_autocast(precision: str) -> bool:
    """Whether work on the CPU under ``precision`` runs in bf16 autocast: ``"bf16"`` always,
    ``"auto"`` where the CPU has bf16 hardware (``runtime.device.cpu_has_native_bf16``), else
    not. Shared by training and the teacher scores, so both pick bf16 on the same machines."""
    return precision == "bf16" or (precision == "auto" and cpu_has_native_bf16())


def mixed_precision(precision: str, device: str) -> dict[str, bool]:
    """The trainer's mixed-precision flags (``{"bf16": True}``, ``{"fp16": True}`` or none).

    Mixed precision keeps fp32 master weights, so only the speed changes. On a CPU, bf16
    autocast is used where the CPU has bf16 hardware (or when asked for); a CPU without it
    emulates bf16 and would be slower than fp32, and fp16 is never used on a CPU.
    """
    import torch

    if precision == "fp32":
        return {}
    if device == "cpu":
        if cpu_bf16_autocast(precision):
            return {"bf16": True}
        if precision == "fp16":
            logger.warning("precision='fp16' is not used on CPU; training in fp32.")
        return {}
    if precision == "fp16":
        return {"fp16": True}
    if precision == "bf16":
        return {"bf16": True}
    if device.startswith("cuda") and torch.cuda.is_available():
        return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    return {}


#: The validation metric that picks the best checkpoint.
BEST_METRIC = "eval_val_ndcg@10"


def training_arguments(config: Any, device: str, has_val: bool) -> dict[str, Any]:
    """``CrossEncoderTrainingArguments`` keyword arguments for ``config`` on ``device``.

    ``config`` must be resolved (:func:`resolve` sets ``checkpoint_dir``). With a validation
    set (``has_val``) the trainer evaluates and saves every ``evaluation_steps`` and keeps the
    best checkpoint by nDCG@10 (:data:`BEST_METRIC`).
    """
    if config.checkpoint_dir is None:
        raise ValueError("config.checkpoint_dir is not set; pass the checkpoint folder")
    kwargs: dict[str, Any] = {
        "output_dir": str(config.checkpoint_dir),
        "num_train_epochs": config.epochs,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.checkpoint_steps or config.evaluation_steps,
        "save_total_limit": config.save_total_limit,
        "seed": config.seed,
        "data_seed": config.seed,
        "report_to": "none",
        "disable_tqdm": not config.show_progress_bar,
        "use_cpu": device == "cpu",
        "dataloader_drop_last": False,
        # every trainable weight of a sequence classifier gets a gradient each step; DDP's
        # unused-parameter search (on by default for a non-transformers model) breaks here
        "ddp_find_unused_parameters": False,
        **mixed_precision(config.precision, device),
    }
    if config.max_steps:
        kwargs["max_steps"] = config.max_steps
    if has_val:
        kwargs.update(
            eval_strategy="steps",
            eval_steps=config.evaluation_steps,
            save_steps=config.evaluation_steps,
            load_best_model_at_end=True,
            metric_for_best_model=BEST_METRIC,
            greater_is_better=True,
        )
    return kwargs


def pick_max_length(
    max_length: int | str,
    *,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    device: str,
    limit: int,
) -> int:
    """Tokens per pair to train at: ``max_length`` (at most ``limit``), or the "auto" rule.

    "auto": the 95th percentile of the tokenized ``pairs`` (:func:`~bge_rerank_plugins.
    tokenization.p95_length`), rounded up to a multiple of 16, at least 32, and at most 192 on
    CPU (512 elsewhere) and ``limit`` (the model's length limit).
    """
    from ..tokenization import p95, p95_length

    if max_length != "auto":
        return min(int(max_length), limit)
    cap = min(AUTO_MAX_LENGTH_CPU if device == "cpu" else AUTO_MAX_LENGTH, limit)
    if not pairs:
        return cap
    encoded = tokenizer(
        [q for q, _ in pairs], [p for _, p in pairs], truncation=True, max_length=limit
    )
    lengths = [len(ids) for ids in encoded["input_ids"]]
    chosen = p95_length(lengths, multiple=_AUTO_MULTIPLE, floor=_AUTO_FLOOR, cap=cap)
    logger.info("max_length='auto' -> %d tokens (p95 of the pairs: %d).", chosen, p95(lengths))
    return chosen
