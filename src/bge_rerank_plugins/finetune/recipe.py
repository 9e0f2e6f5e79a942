"""The fine-tuning recipe: options, defaults and validation in one frozen dataclass.

:class:`FinetuneConfig` holds every training option of
:class:`~bge_rerank_plugins.finetune.engine.CrossEncoderFinetuneEngine` (its keyword arguments
are the fields); adding an option is one field here plus its use. The functions turn a config
into what training needs: :func:`resolve` (loss, device, checkpoint folder),
:func:`training_arguments` (``CrossEncoderTrainingArguments`` keyword arguments, precision
included) and :func:`pick_max_length` (``max_length="auto"``: the 95th-percentile rule of
:func:`bge_rerank_plugins.tokenization.p95_length` rounded to 16, at least 32, at most 192 on
CPU and 512 elsewhere). The defaults are the recipe measured on SciFact (docs/finetuning.md).

>>> config = FinetuneConfig(learning_rate=1e-4, max_minutes=30)
>>> config.learning_rate, config.loss, config.num_negatives
(0.0001, 'auto', 3)
>>> FinetuneConfig(batch_size=0)
Traceback (most recent call last):
...
ValueError: batch_size must be >= 1, got 0.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..runtime.device import cpu_has_native_bf16, resolve_device

__all__ = [
    "AUTO_MAX_LENGTH",
    "AUTO_MAX_LENGTH_CPU",
    "DEFAULTS",
    "LOSSES",
    "PRECISIONS",
    "BEST_METRIC",
    "FinetuneConfig",
    "FinetuneResult",
    "cpu_bf16_autocast",
    "is_grouped",
    "mixed_precision",
    "pick_max_length",
    "resolve",
    "resolve_loss",
    "training_arguments",
]

logger = logging.getLogger(__name__)

#: Accepted names of the ``loss`` option (it also takes a loss module or a callable).
LOSSES = ("auto", "softmax", "bce", "distill")
#: Accepted values of the ``precision`` option.
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: Caps of ``max_length="auto"``: on CPU (where attention cost dominates) and elsewhere.
AUTO_MAX_LENGTH_CPU = 192
AUTO_MAX_LENGTH = 512
# the engine's numbers for the 95th-percentile rule
_AUTO_MULTIPLE = 16
_AUTO_FLOOR = 32


#: int options: name -> smallest value (``_OPTIONAL`` ones may also be None)
_INTS = {
    **dict.fromkeys(("batch_size", "epochs", "evaluation_steps", "num_negatives"), 1),
    **dict.fromkeys(("gradient_accumulation_steps", "save_total_limit", "logging_steps"), 1),
    **dict.fromkeys(("checkpoint_steps", "max_steps"), 1),
    **dict.fromkeys(("freeze_layers", "seed", "early_stopping_patience"), 0),
}
#: number options: name -> (the rule in words, the check)
_NUMBERS = {
    "learning_rate": ("a finite number > 0", lambda v: 0 < v < math.inf),
    "head_learning_rate": ("a finite number > 0", lambda v: 0 < v < math.inf),
    "weight_decay": (">= 0", lambda v: 0 <= v < math.inf),
    "warmup_ratio": ("within [0, 1)", lambda v: 0 <= v < 1),
    "distill_weight": ("within [0, 1]", lambda v: 0 <= v <= 1),
    "unk_warning_threshold": ("within [0, 1]", lambda v: 0 <= v <= 1),
    "max_minutes": ("> 0", lambda v: v > 0),
}
_OPTIONAL = {"checkpoint_steps", "max_steps", "early_stopping_patience"}
_OPTIONAL |= {"head_learning_rate", "max_minutes"}


def _checked(name: str, value: Any) -> Any:
    """``value`` of the int or number option ``name``, checked (TypeError / ValueError)."""
    if value is None and name in _OPTIONAL:
        return None
    if name in _INTS:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
        if value < _INTS[name]:
            raise ValueError(f"{name} must be >= {_INTS[name]}, got {value!r}.")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    rule, check = _NUMBERS[name]
    if math.isnan(value) or not check(value):
        raise ValueError(f"{name} must be {rule}, got {value!r}.")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Every training option of the engine, checked on construction (frozen, keyword-only).

    Attributes:
        batch_size: groups (softmax losses) or pairs (bce) per optimizer micro-step.
        loss: ``"auto"`` (None; ``"distill"`` when every training record carries teacher
            scores, else ``"softmax"``), ``"softmax"`` (grouped softmax cross-entropy),
            ``"bce"`` (pointwise), ``"distill"`` (softmax + KL to the teacher scores), or a
            sentence-transformers loss / a callable ``model -> loss`` (pointwise rows).
        epochs: passes over the training data.
        show_progress_bar: tqdm bars during training.
        evaluation_steps: evaluate (and checkpoint) every this many steps.
        learning_rate: learning rate of the encoder (AdamW).
        head_learning_rate: learning rate of the freshly initialised head and pooler; None:
            ``learning_rate``.
        warmup_ratio: linear warm-up share of the steps (of the budget with ``max_minutes``).
        weight_decay: AdamW weight decay (not on biases, LayerNorm and the head).
        max_length: tokens per (query, passage) pair: an int > 8, or "auto" (the 95th
            percentile of the training pairs, capped at 192 on CPU and 512 elsewhere).
        precision: "auto", "fp32", "fp16" (GPU only) or "bf16" (see :func:`mixed_precision`).
        seed: seeds sampling, initialisation and data order.
        gradient_accumulation_steps: micro-batches per optimizer step.
        freeze_layers: freeze the embeddings and the lowest N transformer layers.
        lora: train LoRA adapters: True or ``peft.LoraConfig`` arguments (merged on export).
        num_negatives: negatives per group (grouped losses), redrawn from all of a query's
            negatives each time its group is read.
        distill_weight: weight of the teacher KL term for ``loss="distill"``, in [0, 1].
        early_stopping_patience: evaluations without improvement before stopping (needs a
            validation set); None or 0: never.
        resume_from_checkpoint: True (the latest checkpoint in ``checkpoint_dir``) or a path.
        checkpoint_dir: where checkpoints go; None: ``<model_output_path>-checkpoints``.
        checkpoint_steps: save a checkpoint every N steps; None: every ``evaluation_steps``.
        save_total_limit: checkpoints kept (the best one is always kept).
        max_steps: stop after this many optimizer steps (overrides ``epochs``).
        max_minutes: wall-clock budget in minutes; the learning rate decays over it.
        logging_steps: log loss and learning rate every N steps.
        device: "cpu", "cuda", ... ; None: the best available.
        unk_warning_threshold: warn above this share of unknown tokens in the training data.
    """

    batch_size: int = 10
    loss: Any = "auto"
    epochs: int = 2
    show_progress_bar: bool = True
    evaluation_steps: int = 50
    learning_rate: float = 2e-4
    head_learning_rate: float | None = 2e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int | str = "auto"
    precision: str = "auto"
    seed: int = 0
    gradient_accumulation_steps: int = 1
    freeze_layers: int = 0
    lora: bool | Mapping[str, Any] = False
    num_negatives: int = 3
    distill_weight: float = 0.5
    early_stopping_patience: int | None = None
    resume_from_checkpoint: bool | str | os.PathLike[str] | None = None
    checkpoint_dir: str | os.PathLike[str] | None = None
    checkpoint_steps: int | None = None
    save_total_limit: int = 2
    max_steps: int | None = None
    max_minutes: float | None = None
    logging_steps: int = 10
    device: str | None = None
    unk_warning_threshold: float = 0.2

    def __post_init__(self) -> None:
        for name in (*_INTS, *_NUMBERS):
            object.__setattr__(self, name, _checked(name, getattr(self, name)))
        object.__setattr__(self, "show_progress_bar", bool(self.show_progress_bar))
        loss = "auto" if self.loss is None else self.loss
        if isinstance(loss, str) and loss not in LOSSES:
            raise ValueError(
                f"loss must be one of {LOSSES}, a sentence-transformers loss or a callable; "
                f"got {loss!r}."
            )
        if not isinstance(loss, str) and not callable(loss):
            raise TypeError(f"loss must be a name, a loss module or a callable, got {loss!r}.")
        object.__setattr__(self, "loss", loss)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}.")
        length = self.max_length
        if not (length == "auto" or (type(length) is int and length > 8)):
            raise ValueError(f"max_length must be an int > 8 or 'auto', got {length!r}.")
        if not isinstance(self.lora, (bool, Mapping)):
            raise TypeError(
                f"lora must be True/False or a dict of LoraConfig arguments, got {self.lora!r}."
            )
        for name in ("resume_from_checkpoint", "checkpoint_dir"):
            value = getattr(self, name)
            allowed = (
                (bool, str, os.PathLike) if name == "resume_from_checkpoint" else (str, os.PathLike)
            )
            if value is not None and not isinstance(value, allowed):
                raise TypeError(f"{name} must be a path (or None), got {value!r}.")


#: The defaults of :class:`FinetuneConfig` (the measured CPU recipe), plus the caps of
#: ``max_length="auto"`` (``auto_max_length_cpu``, ``auto_max_length``).
DEFAULTS: dict[str, Any] = {
    **{f.name: f.default for f in fields(FinetuneConfig)},
    "auto_max_length_cpu": AUTO_MAX_LENGTH_CPU,
    "auto_max_length": AUTO_MAX_LENGTH,
}


@dataclass
class FinetuneResult:
    """What :meth:`CrossEncoderFinetuneEngine.finetune` did.

    Attributes:
        output_path: the saved model folder.
        global_step: optimizer steps done in total (including resumed ones).
        train_seconds: wall time of the training loop.
        stopped_by_time: True when the ``max_minutes`` budget ended training.
        best_metric: best validation metric (when a validation set was given).
        resumed_from_step: the checkpoint step training resumed from (None: from scratch).
        log_history: the trainer's log entries (loss, learning rate, validation metrics).
        max_length: tokens per pair the model was trained at; serve the model at about this
            length (``CrossEncoderScorer(path, max_length=...)``): far past it, ranking gets
            worse (on SciFact, runs long enough did best a little past it; docs/finetuning.md).
    """

    output_path: Path
    global_step: int
    train_seconds: float
    stopped_by_time: bool = False
    best_metric: float | None = None
    resumed_from_step: int | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    max_length: int | None = None


def resolve(
    config: FinetuneConfig, *, records: Sequence[Any] | None, model_output_path: str
) -> FinetuneConfig:
    """``config`` with its choices made: the loss (:func:`resolve_loss`), the device
    (:func:`~bge_rerank_plugins.runtime.device.resolve_device`), the checkpoint folder and
    steps."""
    return replace(
        config,
        loss=resolve_loss(config.loss, records),
        device=resolve_device(config.device),
        checkpoint_dir=str(config.checkpoint_dir or f"{Path(model_output_path)}-checkpoints"),
        checkpoint_steps=config.checkpoint_steps or config.evaluation_steps,
    )


def is_grouped(loss: Any) -> bool:
    """Whether ``loss`` trains on groups (one positive + negatives) rather than on pairs."""
    return isinstance(loss, str) and loss in ("softmax", "distill")


def resolve_loss(loss: Any, records: Sequence[Any] | None) -> Any:
    """``"auto"`` -> ``"distill"`` when every record has teacher scores, else ``"softmax"``.

    Distillation won every comparison on SciFact with the small CPU budget (docs/finetuning.md),
    so data that brings teacher scores trains with them unless told otherwise. ``records`` are
    the parsed :class:`~bge_rerank_plugins.finetune.data.TrainingGroup` records (needed for
    "auto" only); any other ``loss`` is returned as it is.
    """
    if loss != "auto":
        return loss
    if records is None:
        raise ValueError("loss='auto' needs the parsed training records to decide")
    chosen = "distill" if all(r.has_scores for r in records) else "softmax"
    logger.info(
        "loss='auto' -> %r (%s).",
        chosen,
        "every training record carries teacher scores"
        if chosen == "distill"
        else "no teacher scores on the training records",
    )
    return chosen


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
BEST_METRIC = "eval_val_mrr@10"


def training_arguments(config: FinetuneConfig, device: str, has_val: bool) -> dict[str, Any]:
    """``CrossEncoderTrainingArguments`` keyword arguments for ``config`` on ``device``.

    ``config`` must be resolved (:func:`resolve` sets ``checkpoint_dir``). With a validation
    set (``has_val``) the trainer evaluates and saves every ``evaluation_steps`` and keeps the
    best checkpoint by MRR@10 (:data:`BEST_METRIC`).
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
