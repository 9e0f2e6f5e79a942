"""The training loop's parts: a thin trainer subclass, a time budget, guards and checkpoints.

* :class:`RerankerTrainer`: sentence-transformers' ``CrossEncoderTrainer`` with three named
  hooks overridden: the optimizer (a separate, higher learning rate for the freshly
  initialised head; no weight decay on biases, LayerNorm and the head), the schedule (linear
  warm-up and decay, over the wall-clock budget when there is one) and the non-finite guard
  (a NaN or infinite loss stops training before the backward pass; checkpoints refuse
  non-finite weights).
* :class:`TimeBudgetCallback`: stops training when the budget is spent (``stopped`` says so).
* :func:`train`: builds the trainer from a resolved config and runs it;
  :func:`diverged_error`: the error a non-finite run ends with; :func:`make_loss`: the loss.
* :func:`build_evaluator`: the in-training validation (MRR@10 / nDCG@10 by
  sentence-transformers' ``CrossEncoderRerankingEvaluator``; a label > 0.5 is relevant).
* :func:`latest_checkpoint` and :func:`resume_point`: resuming after a kill.

Importing this module imports torch and sentence-transformers (the engine imports it lazily).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import torch
    from sentence_transformers.cross_encoder import CrossEncoderTrainer
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "Fine-tuning needs sentence-transformers, datasets and accelerate: "
        "pip install 'bge-rerank-plugins[finetune]'."
    ) from error

from .modeling import first_non_finite

__all__ = [
    "RerankerTrainer",
    "TimeBudgetCallback",
    "TrainingDiverged",
    "build_evaluator",
    "diverged_error",
    "latest_checkpoint",
    "make_loss",
    "resume_point",
    "train",
]

logger = logging.getLogger(__name__)


class TrainingDiverged(Exception):
    """Raised inside the trainer on a NaN or infinite loss or weights; ``detail`` says what
    and at which step (the engine re-raises it as a ``RerankerError``)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def diverged_error(detail: str, config: Any, model_output_path: str) -> Exception:
    """The ``RerankerError`` for a run whose loss (or weights) stopped being finite."""
    from ..errors import RerankerError

    last = latest_checkpoint(config.checkpoint_dir)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
    return RerankerError(
        f"Training stopped: {detail} (not finite). Nothing was written to "
        f"model_output_path={model_output_path!r} (a model already there is kept); "
        f"{kept}. Usual causes: a learning rate too high (learning_rate="
        f"{config.learning_rate}, head_learning_rate={config.head_learning_rate}), fp16 "
        "overflow (try precision='bf16' or 'fp32'), or a custom loss that returns NaN."
    )


class TimeBudgetCallback(TrainerCallback):
    """Stops training once ``budget_s`` seconds have passed since training began.

    Attributes:
        budget_s: the budget in seconds (None: no budget, the callback only keeps time).
        evaluate_on_stop: evaluate and save at the stop (there is a validation set), so the
            best checkpoint also considers the last steps.
        start: ``time.time()`` when training began.
        stopped: True once the budget ended training.
    """

    def __init__(self, budget_s: float | None, *, evaluate_on_stop: bool = False) -> None:
        self.budget_s = budget_s
        self.evaluate_on_stop = evaluate_on_stop
        self.start = time.time()
        self.stopped = False

    def elapsed(self) -> float:
        """Seconds since training began."""
        return time.time() - self.start

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.start = time.time()

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self.budget_s is not None and self.elapsed() >= self.budget_s:
            self.stopped = True
            control.should_training_stop = True
            if self.evaluate_on_stop:
                control.should_evaluate = True
                control.should_save = True


def _is_head(name: str) -> bool:
    return any(part in name for part in ("classifier", "pooler", ".score.", "score.weight"))


class RerankerTrainer(CrossEncoderTrainer):
    """``CrossEncoderTrainer`` with the engine's optimizer, schedule and non-finite guard.

    Args:
        *args, **kwargs: those of ``CrossEncoderTrainer`` (``model``, ``args``, ``loss``, ...);
            the learning rate and weight decay are read from ``args``.
        head_learning_rate: learning rate of the head and pooler; None: ``args.learning_rate``.
        warmup_ratio: linear warm-up share of the steps (of the budget with ``budget_s``).
        budget_s: wall-clock budget in seconds: a :class:`TimeBudgetCallback` (``self.budget``)
            stops training when it is spent, and the learning rate decays over it.
    """

    def __init__(
        self,
        *args: Any,
        head_learning_rate: float | None = None,
        warmup_ratio: float = 0.0,
        budget_s: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.head_learning_rate = head_learning_rate
        self.warmup_ratio = float(warmup_ratio)
        self.budget = TimeBudgetCallback(
            budget_s, evaluate_on_stop=kwargs.get("evaluator") is not None
        )
        kwargs["callbacks"] = [self.budget, *(kwargs.get("callbacks") or [])]
        super().__init__(*args, **kwargs)

    def compute_loss(
        self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        result = super().compute_loss(
            model, inputs, return_outputs, num_items_in_batch=num_items_in_batch
        )
        loss = result[0] if return_outputs else result
        # one scalar check per micro-step (the trainer syncs on the loss anyway); raised
        # before backward, so the weights are still those of the last good step
        if model.training and not bool(torch.isfinite(loss.detach()).all()):
            step = self.state.global_step + 1
            raise TrainingDiverged(f"the loss is {float(loss.detach())} at optimizer step {step}")
        return result

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        bad = first_non_finite(self.model)
        if bad is not None:  # never checkpoint broken weights
            raise TrainingDiverged(
                f"parameter {bad!r} holds NaN or infinite values after optimizer step "
                f"{self.state.global_step}"
            )
        super()._save_checkpoint(model, trial)

    def create_optimizer(self, model: Any = None) -> Any:
        if self.optimizer is not None:
            return self.optimizer
        lr, decay = self.args.learning_rate, self.args.weight_decay
        groups: dict[str, list[Any]] = {"decay": [], "no_decay": [], "head": []}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            if _is_head(name):
                groups["head"].append(param)
            elif name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                groups["no_decay"].append(param)
            else:
                groups["decay"].append(param)
        specs = [
            {"params": groups["decay"], "weight_decay": decay, "lr": lr},
            {"params": groups["no_decay"], "weight_decay": 0.0, "lr": lr},
            {"params": groups["head"], "weight_decay": 0.0, "lr": self.head_learning_rate or lr},
        ]
        self.optimizer = torch.optim.AdamW([s for s in specs if s["params"]], lr=lr)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        ratio, budget_s = self.warmup_ratio, self.budget.budget_s
        warmup = max(1, int(ratio * num_training_steps))

        def factor(step: int) -> float:
            progress = step / max(1, num_training_steps)
            # the wall clock differs between processes: under torchrun every rank must use the
            # same rate, so there the schedule follows the steps only
            if budget_s is not None and not _distributed():
                progress = max(progress, self.budget.elapsed() / budget_s)
                warm = min(1.0, progress / ratio) if ratio else 1.0
            else:
                warm = min(1.0, (step + 1) / warmup) if ratio else 1.0
            if warm < 1.0:
                return max(warm, 1e-3)
            return max(0.0, 1.0 - progress)

        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        return self.lr_scheduler


def train(
    model: Any,
    config: Any,
    *,
    device: str,
    train_dataset: Any,
    loss: Any,
    evaluator: Any,
    step_hooks: Sequence[Any] = (),
) -> tuple[RerankerTrainer, float, int | None]:
    """Run training with a resolved :class:`~.recipe.FinetuneConfig` (``checkpoint_dir`` set).

    ``step_hooks``: objects with ``attach(trainer)`` and ``on_step_end(step)``, called after
    every optimizer step (the warm start sizes its budget this way).

    Returns:
        The trainer (its ``state`` and ``model`` hold the outcome), the training loop's wall
        time in seconds, and the step training resumed from (None: from scratch).

    Raises:
        TrainingDiverged: the loss or the weights stopped being finite.
    """
    from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments
    from transformers import EarlyStoppingCallback

    from .recipe import training_arguments

    has_val = evaluator is not None
    args = CrossEncoderTrainingArguments(**training_arguments(config, device, has_val))
    callbacks: list[Any] = []
    if config.early_stopping_patience and has_val:
        callbacks.append(EarlyStoppingCallback(config.early_stopping_patience))
    elif config.early_stopping_patience:
        logger.warning("early_stopping_patience needs a val_dataset; ignoring it.")
    trainer = RerankerTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        loss=loss,
        evaluator=evaluator,
        callbacks=callbacks,
        head_learning_rate=config.head_learning_rate,
        warmup_ratio=config.warmup_ratio,
        budget_s=config.max_minutes * 60 if config.max_minutes else None,
    )
    for hook in step_hooks:
        hook.attach(trainer)
        trainer.add_callback(_StepHook(hook))
    resume, resumed_step = resume_point(config.resume_from_checkpoint, config.checkpoint_dir)
    started = time.time()
    trainer.train(resume_from_checkpoint=resume)
    return trainer, time.time() - started, resumed_step


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _StepHook(TrainerCallback):
    """Calls ``hook.on_step_end(global_step)`` after each optimizer step."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.hook.on_step_end(state.global_step)


def make_loss(loss: Any, model: Any, distill_weight: float) -> Any:
    """The loss module for a resolved ``loss`` choice (a name, a loss module or a callable)."""
    from sentence_transformers.cross_encoder import losses

    from .losses import GroupedSoftmaxLoss

    if loss == "softmax":
        return GroupedSoftmaxLoss(model)
    if loss == "distill":
        return GroupedSoftmaxLoss(model, distill_weight=distill_weight)
    if loss == "bce":
        return losses.BinaryCrossEntropyLoss(model)
    if callable(loss) and not hasattr(loss, "forward"):
        return loss(model)
    if getattr(loss, "model", None) is not None and loss.model is not model:
        loss.model = model
    return loss


# ---------------------------------------------------------------------- validation
def build_evaluator(val_dataset: Sequence[Any] | None) -> Any:
    """The in-training ranking evaluator (MRR@10, nDCG@10) on ``val_dataset``, or None.

    Raises:
        ValueError: no query has both a positive (score > 0.5) and a negative passage.
    """
    if not val_dataset:
        return None
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    from .grouping import pointwise_rows, reranking_samples

    samples = reranking_samples(pointwise_rows(val_dataset, "val_dataset"))
    if not samples:
        raise ValueError(
            "val_dataset has no query with both a positive (score > 0.5) and a negative "
            "passage, so no ranking metric can be computed."
        )
    return CrossEncoderRerankingEvaluator(
        samples, at_k=10, name="val", batch_size=32, write_csv=False
    )


# ---------------------------------------------------------------------- checkpoints
def latest_checkpoint(folder: str | os.PathLike[str]) -> str | None:
    """The newest *complete* ``checkpoint-<step>`` in ``folder``.

    The trainer writes ``trainer_state.json`` last, so a checkpoint without it was cut short (a
    kill during the save) and is skipped in favour of the previous one.
    """
    root = Path(folder)
    if not root.is_dir():
        return None
    complete = []
    for path in root.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / "trainer_state.json").is_file():
            complete.append((int(step), path))
        elif step.isdigit():
            logger.warning("Skipping %s: it has no trainer_state.json (an interrupted save).", path)
    return str(max(complete)[1]) if complete else None


def resume_point(
    resume: bool | str | os.PathLike[str] | None, checkpoint_dir: str | os.PathLike[str]
) -> tuple[str | None, int | None]:
    """The checkpoint to resume from and its global step, or ``(None, None)`` (from scratch).

    ``resume=True`` picks :func:`latest_checkpoint` of ``checkpoint_dir`` (a warning when there
    is none); a path must be a checkpoint folder.

    Raises:
        FileNotFoundError: ``resume`` is a path without ``trainer_state.json``.
    """
    if resume is True:
        resume = latest_checkpoint(checkpoint_dir)
        if resume is None:
            logger.warning("No checkpoint in %s; training from scratch.", checkpoint_dir)
    if not resume:
        return None, None
    state_file = Path(resume) / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(
            f"resume_from_checkpoint={str(resume)!r} is not a checkpoint folder "
            "(no trainer_state.json); pass True to pick the latest in checkpoint_dir."
        )
    step = int(json.loads(state_file.read_text())["global_step"])
    logger.info("Resuming from %s (step %d).", resume, step)
    return str(resume), step
