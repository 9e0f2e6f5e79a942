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

from ..runtime.device import resolve_device
from .arguments import (
    AUTO_MAX_LENGTH,
    AUTO_MAX_LENGTH_CPU,
    BEST_METRIC,
    cpu_bf16_autocast,
    mixed_precision,
    pick_max_length,
    training_arguments,
)

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
    "engine_config",
    "is_grouped",
    "mixed_precision",
    "pick_max_length",
    "resolve",
    "resolve_loss",
    "run_config",
    "training_arguments",
]

logger = logging.getLogger(__name__)

#: Accepted names of the ``loss`` option (it also takes a loss module or a callable).
LOSSES = ("auto", "softmax", "bce", "distill")
#: Accepted values of the ``precision`` option.
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


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


#: options that also take "auto" (the engine decides; see :mod:`.plan`)
_AUTO_ALLOWED = {"learning_rate", "head_learning_rate"}


def _checked(name: str, value: Any) -> Any:
    """``value`` of the int or number option ``name``, checked (TypeError / ValueError)."""
    if value is None and name in _OPTIONAL:
        return None
    if value == "auto" and name in _AUTO_ALLOWED:
        return "auto"
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
        learning_rate: learning rate of the encoder (AdamW); "auto": 2e-4 when the head is
            untrained (a fresh head on a bi-encoder's body), 2e-5 for a trained reranker.
        head_learning_rate: learning rate of the head and pooler; None: ``learning_rate``;
            "auto": 10x ``learning_rate`` for an untrained head, ``learning_rate`` otherwise.
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
        max_minutes: wall-clock budget in minutes for everything ``finetune()`` does (teacher
            scores, warm start, training, held-out figures); the learning rate decays over it.
            Default 30; None: no budget.
        logging_steps: log loss and learning rate every N steps.
        device: "cpu", "cuda", ... ; None: the best available.
        unk_warning_threshold: warn above this share of unknown tokens in the training data.
        holdout: queries kept out of training when no ``val_dataset`` is given (the engine's
            yardstick, :mod:`.holdout`): "auto" (a tenth, 20 to 100, with >= 50 queries), a
            number of queries, a share in [0, 1), or 0/None (none).
        warm_start: train first against the base encoder's own similarity when the head is
            untrained (:mod:`.warm_start`): "auto" (decided on the held-out queries), True,
            False.
        from_encoder: the base may be an encoder without a reranking head (a base model or a
            bi-encoder); its head starts at random. Without it such a base is refused
            (``RandomHeadError``), so a random head never happens by accident.
    """

    batch_size: int = 10
    loss: Any = "auto"
    epochs: int = 2
    show_progress_bar: bool = True
    evaluation_steps: int = 50
    learning_rate: float | str = "auto"
    head_learning_rate: float | str | None = "auto"
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
    max_minutes: float | None = 30.0
    logging_steps: int = 10
    device: str | None = None
    unk_warning_threshold: float = 0.2
    holdout: int | float | str | None = "auto"
    warm_start: bool | str = "auto"
    from_encoder: bool = False

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
        holdout = self.holdout
        if isinstance(holdout, bool) or not (
            holdout is None
            or holdout == "auto"
            or (isinstance(holdout, int) and holdout >= 0)
            or (isinstance(holdout, float) and 0 <= holdout < 1)
        ):
            raise ValueError(
                "holdout must be 'auto', a number of queries (int >= 0), a share in [0, 1) or "
                f"None; got {holdout!r}."
            )
        if not isinstance(self.from_encoder, bool):
            raise TypeError(f"from_encoder must be True or False, got {self.from_encoder!r}.")
        if self.warm_start not in (True, False, "auto"):
            raise ValueError(f"warm_start must be True, False or 'auto', got {self.warm_start!r}.")
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
        held_out: the :class:`~.holdout.HeldOutReport` (nDCG@10 on the held-out queries before
            and after), or None without held-out queries.
        decisions: what the engine decided (learning rates, warm start, loss, batch size,
            budget), as logged.
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
    held_out: Any = None
    decisions: dict[str, Any] = field(default_factory=dict)


#: What ``finetune(**train_kwargs)`` accepts: options for one run only.
RUN_OPTIONS = ("max_minutes", "max_steps", "resume_from_checkpoint")


def engine_config(options: dict[str, Any], **engine_arguments: Any) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of an engine constructor's named arguments and its
    ``**options``; an unknown option raises ``TypeError`` naming it (never swallowed)."""
    known = {f.name for f in fields(FinetuneConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"CrossEncoderFinetuneEngine got unexpected keyword arguments {unknown}; the "
            f"training options are {sorted(known)}."
        )
    return FinetuneConfig(**engine_arguments, **options)


def run_config(config: FinetuneConfig, train_kwargs: dict[str, Any]) -> FinetuneConfig:
    """``config`` with ``finetune(**train_kwargs)``'s options for one run; anything but
    :data:`RUN_OPTIONS` raises ``TypeError``."""
    unknown = sorted(set(train_kwargs) - set(RUN_OPTIONS))
    if unknown:
        raise TypeError(
            f"finetune() got unexpected arguments {unknown}; pass training options to the "
            f"constructor (finetune accepts only {sorted(RUN_OPTIONS)})."
        )
    return replace(config, **train_kwargs)


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
