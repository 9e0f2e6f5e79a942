"""The engine's path for causal-LM bases: ``CrossEncoderFinetuneEngine`` on bge-reranker-v2-gemma.

``CrossEncoderFinetuneEngine(dataset, model_id=...)`` with a base the scorer reads as a causal
family (``"bge-decoder-only"``, ``"causal-yes-no"``) is a :class:`CausalFinetuneEngine`: the
same constructor and methods, whose ``finetune()`` runs
:func:`~bge_rerank_plugins.finetune.causal.finetune_causal_reranker` (LoRA on the family's own
score, FlagEmbedding's grouped softmax) and writes the merged model to ``model_output_path``.
``get_finetuned_model`` and ``push_to_hub`` are the engine's.

The options mean what they mean for a cross-encoder, with these differences: LoRA is always on
(``lora=True`` or a dict of ``peft.LoraConfig`` arguments; the default ``False`` still trains
adapters, r=8, alpha=16); ``learning_rate="auto"`` is 2e-4 and ``max_length="auto"`` 512 (the
scorer's default); ``precision="auto"`` is bf16 on a GPU that has it, fp32 otherwise. What this
path does not do yet is refused when set: a ``val_dataset``, held-out queries, losses other than
the grouped softmax, checkpoints and resuming, freezing, warm starts.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .recipe import DEFAULTS, FinetuneConfig, FinetuneResult, engine_config, resolve, run_config

__all__ = ["CausalFinetuneEngine", "engine_class"]

logger = logging.getLogger(__name__)

#: Options the causal path does not implement: refused at any value but their default.
_UNSUPPORTED = (
    "head_learning_rate",
    "freeze_layers",
    "distill_weight",
    "early_stopping_patience",
    "resume_from_checkpoint",
    "checkpoint_dir",
    "checkpoint_steps",
    "save_total_limit",
    "unk_warning_threshold",
    "warm_start",
    "from_encoder",
)
_HOLDOUT_OFF = ("auto", 0, 0.0, None)


def engine_class(cls: type, args: Sequence[Any], kwargs: Mapping[str, Any]) -> type:
    """The class ``CrossEncoderFinetuneEngine(*args, **kwargs)`` builds (its ``__new__``):
    ``cls`` combined with :class:`CausalFinetuneEngine` for a causal-LM ``model_id``, else
    ``cls`` itself.

    A base whose config cannot be read here keeps ``cls``: the engine's own loading then
    reports why, as it did before this path existed. A subclass of the engine (the combined
    class included) is built as it is.
    """
    if "__new__" not in vars(cls):  # a subclass of the engine: its own choice of class
        return cls
    default = inspect.signature(cls.__init__).parameters["model_id"].default
    model_id = kwargs.get("model_id", args[1] if len(args) > 1 else default)
    try:
        from transformers import AutoConfig

        from ..runtime.families import detect_family

        family = detect_family(str(model_id), AutoConfig.from_pretrained(str(model_id)))
    except Exception:  # not readable here: the cross-encoder engine's loading reports it
        return cls
    from .causal import CAUSAL_FAMILIES

    return _combined(cls) if family in CAUSAL_FAMILIES else cls


@functools.cache
def _combined(engine: type) -> type:
    """The engine class with :class:`CausalFinetuneEngine`'s methods first (one per engine
    class). The engine is passed in rather than imported: it imports this module."""
    return type("CausalFinetuneEngine", (CausalFinetuneEngine, engine), {"__module__": __name__})


class CausalFinetuneEngine:
    """``CrossEncoderFinetuneEngine``'s methods for a causal-LM reranker base (see the module).

    Not built directly: ``CrossEncoderFinetuneEngine(...)`` on a causal-LM base is an instance
    of this class and of the engine (the engine's ``get_finetuned_model``, ``push_to_hub`` and
    options-as-attributes are kept). The data is parsed and the options are checked on
    construction; the model is loaded by ``finetune()``.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is CausalFinetuneEngine:
            raise TypeError(
                "CausalFinetuneEngine is not built directly: CrossEncoderFinetuneEngine(dataset, "
                "model_id=<a causal-LM reranker>, ...) is one."
            )
        return super().__new__(cls)

    def __init__(
        self,
        dataset: Sequence[Any],
        model_id: str = "BAAI/bge-reranker-v2-gemma",
        model_output_path: str = "exp_finetune",
        batch_size: int = 10,
        val_dataset: Sequence[Any] | None = None,
        loss: Any = None,
        epochs: int = 2,
        show_progress_bar: bool = True,
        evaluation_steps: int = 50,
        **options: Any,
    ) -> None:
        from ..runtime.families import detect_family
        from .data import load_training_data
        from .export import check_output_dir

        if not dataset:
            raise ValueError("dataset is empty: give at least one training sample.")
        config = engine_config(
            options,
            batch_size=batch_size,
            loss=loss,
            epochs=epochs,
            show_progress_bar=show_progress_bar,
            evaluation_steps=evaluation_steps,
        )
        _refuse_unsupported(config, model_id, val_dataset)
        check_output_dir(model_output_path, "model_output_path")
        from transformers import AutoConfig

        self.model_id = str(model_id)
        self.family = detect_family(self.model_id, AutoConfig.from_pretrained(self.model_id))
        self.model_output_path = str(model_output_path)
        self.dataset = list(dataset)
        self.val_dataset = None
        self.held_out: list[Any] = []
        self.auto_loss = config.loss == "auto"
        self.records = load_training_data(self.dataset, name="dataset")
        self.config = resolve(
            replace(config, loss="softmax"), records=None, model_output_path=self.model_output_path
        )
        self.model = None  # the causal LM is loaded (and freed) by finetune()
        self.result: FinetuneResult | None = None
        logger.info(
            "model_id=%r is a causal-LM reranker (family %r): finetune() trains LoRA adapters "
            "on its own score (grouped softmax) on all of the dataset (no held-out queries) "
            "and saves the merged model.",
            self.model_id,
            self.family,
        )

    def finetune(self, **train_kwargs: Any) -> FinetuneResult:
        """Train LoRA adapters, merge them and save the model to ``model_output_path``.

        Args:
            **train_kwargs: ``max_minutes`` and ``max_steps`` for this run only.

        Returns:
            A :class:`~bge_rerank_plugins.finetune.recipe.FinetuneResult` (also ``self.result``).
        """
        from .causal import finetune_causal_reranker

        config = run_config(self.config, train_kwargs)
        if config.resume_from_checkpoint:
            raise ValueError(
                "resume_from_checkpoint: a causal-LM base is trained without checkpoints; "
                "run finetune() again from the start."
            )
        lora = dict(config.lora) if isinstance(config.lora, Mapping) else None
        learning_rate = 2e-4 if config.learning_rate == "auto" else config.learning_rate
        max_length = 512 if config.max_length == "auto" else config.max_length
        dtype = _dtype(config.precision, str(config.device))
        decisions = {
            "path": "causal LoRA",
            "family": self.family,
            "learning_rate": learning_rate,
            "max_length": max_length,
            "dtype": dtype,
        }
        logger.info("Causal-LM fine-tuning: %s", decisions)
        outcome = finetune_causal_reranker(
            self.records,
            self.model_id,
            self.model_output_path,
            family=self.family,
            lora=lora,
            learning_rate=learning_rate,
            epochs=config.epochs,
            batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            max_length=max_length,
            max_steps=config.max_steps,
            seed=config.seed,
            num_negatives=config.num_negatives,
            warmup_ratio=config.warmup_ratio,
            weight_decay=config.weight_decay,
            max_minutes=config.max_minutes,
            device=config.device,
            dtype=dtype,
            logging_steps=config.logging_steps,
            show_progress_bar=config.show_progress_bar,
        )
        self.result = FinetuneResult(
            output_path=Path(self.model_output_path),
            global_step=outcome.global_step,
            train_seconds=outcome.train_seconds,
            stopped_by_time=outcome.stopped_by_time,
            log_history=outcome.log_history,
            max_length=max_length,
            decisions=decisions,
        )
        return self.result

    def save(self, path: Any, *, training_summary: Any = None) -> Path:
        """Not available for a causal-LM base: ``finetune()`` writes ``model_output_path``."""
        raise NotImplementedError(
            "save(): a causal-LM base's merged model is written to model_output_path by "
            f"finetune() ({self.model_output_path!r}); copy that folder to {str(path)!r}."
        )


def _refuse_unsupported(config: FinetuneConfig, model_id: Any, val_dataset: Any) -> None:
    """Refuse what the causal path does not do, naming the option."""
    base = f"model_id={str(model_id)!r} is a causal-LM reranker"
    if val_dataset is not None:
        raise ValueError(
            f"val_dataset: {base}, trained without validation for now; drop val_dataset and "
            "score the result with CrossEncoderScorer yourself."
        )
    if config.loss not in ("auto", "softmax"):
        raise ValueError(
            f"loss={config.loss!r}: {base}, trained with the grouped softmax only "
            "(loss='auto' or 'softmax')."
        )
    if config.holdout not in _HOLDOUT_OFF:
        raise ValueError(
            f"holdout={config.holdout!r}: {base}, trained on all of the dataset (no held-out "
            "queries yet); pass holdout=0."
        )
    if config.precision == "fp16":
        raise ValueError(f"precision='fp16': {base}; use 'bf16' or 'fp32'.")
    for name in _UNSUPPORTED:
        if getattr(config, name) != DEFAULTS[name]:
            raise ValueError(
                f"{name}={getattr(config, name)!r}: {base}, and that option is not implemented "
                f"for causal LMs; leave it at its default ({DEFAULTS[name]!r})."
            )


def _dtype(precision: str, device: str) -> str:
    """The dtype of the base weights for ``precision`` on ``device``."""
    if precision == "bf16":
        return "bfloat16"
    if precision == "auto" and device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "float32"
