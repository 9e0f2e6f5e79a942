"""``CrossEncoderFinetuneEngine``: fine-tune a cross-encoder reranker on your own data.

The constructor and methods are those of LlamaIndex's engine of the same name
(``llama_index.finetuning.cross_encoders.cross_encoder.CrossEncoderFinetuneEngine``), so code
written for it runs after swapping the import; the ``loss`` argument is honoured here. Training
runs on sentence-transformers' ``CrossEncoderTrainer`` (a Hugging Face ``Trainer``): progress
bars, logging, mixed precision, gradient accumulation, checkpoints and resuming come from it.
Beyond LlamaIndex's API, the keyword-only options of
:class:`~bge_rerank_plugins.finetune.recipe.FinetuneConfig` (learning rates, warm-up,
``max_length="auto"``, precision, LoRA, freezing, early stopping, a wall-clock budget,
resuming). The result in ``model_output_path`` is a plain Hugging Face model folder, written
atomically (:mod:`bge_rerank_plugins.finetune.export`).

This module is the facade. Its parts: :mod:`.recipe` (options, defaults, the trainer's
arguments), :mod:`.data` (every record is parsed and validated there), :mod:`.grouping`
(training groups, the per-epoch negative redraw), :mod:`.modeling` (the base model, LoRA,
freezing) and :mod:`.trainer` (the trainer subclass, time budget, checkpoints).

Data: LlamaIndex ``CrossEncoderFinetuningDatasetSample`` objects (``query``, ``context``,
``score``) or any format of :func:`~bge_rerank_plugins.finetune.data.load_training_data`. The
grouped losses train on one positive + ``num_negatives`` negatives; a query without enough
negatives borrows random passages of other queries. The default loss, ``"auto"``, is
``"distill"`` when every training record carries teacher scores, ``"softmax"`` otherwise.

Example:
    >>> from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine
    >>> samples = [{"query": "q", "context": "relevant", "score": 1.0},
    ...            {"query": "q", "context": "other", "score": 0.0}]
    >>> engine = CrossEncoderFinetuneEngine(samples, model_id="path/to/model",
    ...     model_output_path="out")  # doctest: +SKIP
    >>> engine.finetune()  # doctest: +SKIP
    >>> reranker = engine.get_finetuned_model(top_n=3)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .causal_engine import engine_class
from .recipe import (
    DEFAULTS,
    FinetuneConfig,
    FinetuneResult,
    engine_config,
    resolve,
    run_config,
)

logger = logging.getLogger(__name__)

__all__ = ["DEFAULTS", "CrossEncoderFinetuneEngine", "FinetuneConfig", "FinetuneResult"]

_OPTIONS = frozenset(f.name for f in fields(FinetuneConfig))
#: The options ``finetune(**train_kwargs)`` may override for one run.


class CrossEncoderFinetuneEngine:
    """Fine-tune a cross-encoder (LlamaIndex-compatible API, plus training controls).

    Args:
        dataset: training samples (LlamaIndex samples with ``query``/``context``/``score`` or
            grouped records with ``query``/``positives``/``negatives``).
        model_id: base model: a Hub id or a local folder.
        model_output_path: folder that receives the fine-tuned model (written atomically): a
            new or empty folder, or a model folder written by this library (its model files
            are replaced, every other file in it is kept). A non-empty folder this library did
            not write raises ``FileExistsError`` here, before training.
        batch_size: groups (softmax loss) or pairs (bce) per optimizer micro-step.
        val_dataset: validation samples, same formats; enables evaluation every
            ``evaluation_steps``, keeps the best checkpoint by MRR@10 and early stopping.
        loss: ``"auto"`` (default), ``"softmax"``, ``"bce"``, ``"distill"``, or a
            sentence-transformers cross-encoder loss / a callable ``model -> loss`` (see
            :class:`~bge_rerank_plugins.finetune.recipe.FinetuneConfig`). ``self.loss`` holds
            the resolved choice.
        epochs: passes over the training data.
        show_progress_bar: tqdm bars during training.
        evaluation_steps: evaluate (and checkpoint) every this many steps.
        **options: keyword-only training options: the fields of
            :class:`~bge_rerank_plugins.finetune.recipe.FinetuneConfig` (``learning_rate``,
            ``max_minutes``, ``precision``, ``lora``, ...). Each is also an attribute of the
            engine; ``engine.config`` holds them all, resolved (loss, device, checkpoints).

    Raises:
        TypeError: an unknown option, or an option of the wrong type.
        ValueError: an option out of range, or training data that cannot be used.

    Example:
        >>> engine = CrossEncoderFinetuneEngine(
        ...     train_samples, model_id="BAAI/bge-reranker-v2-m3", model_output_path="out",
        ...     val_dataset=val_samples, max_minutes=30)  # doctest: +SKIP
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # a causal-LM base: .causal_engine
        return super().__new__(engine_class(cls, args, kwargs))

    def __init__(
        self,
        dataset: Sequence[Any],
        model_id: str = "cross-encoder/ms-marco-MiniLM-L-12-v2",
        model_output_path: str = "exp_finetune",
        batch_size: int = 10,
        val_dataset: Sequence[Any] | None = None,
        loss: Any = None,
        epochs: int = 2,
        show_progress_bar: bool = True,
        evaluation_steps: int = 50,
        **options: Any,
    ) -> None:
        from ..runtime.loading import model_length_limit
        from .data import load_training_data
        from .export import check_output_dir
        from .grouping import build_train_dataset, is_llama_index, pointwise_rows
        from .recipe import is_grouped

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
        # before any training: a folder that cannot take the model is refused now, not after
        # hours of training (and nothing in it is ever deleted)
        check_output_dir(model_output_path, "model_output_path")

        from .holdout import held_out_queries, split_by_query

        self.dataset = list(dataset)
        self.model_id = str(model_id)
        self.model_output_path = str(model_output_path)
        self.val_dataset = list(val_dataset) if val_dataset is not None else None
        # the yardstick: the val_dataset, else queries held out of the training data (by query)
        source, held_raw = (
            (self.dataset, [])
            if self.val_dataset is not None
            else split_by_query(self.dataset, config.holdout, seed=config.seed)
        )
        yardstick = self.val_dataset if self.val_dataset is not None else held_raw
        name = "val_dataset" if self.val_dataset is not None else "dataset"
        self.held_out = held_out_queries(yardstick, name=name) if yardstick else []
        if held_raw:
            logger.info(
                "Held out %d of the training queries (holdout=%r): the yardstick for the "
                "learning rates, the warm start, the best checkpoint and the final check.",
                len({item.query for item in self.held_out}),
                config.holdout,
            )
        self.auto_loss = config.loss == "auto"
        self.llama_index_input = is_llama_index(source)
        self._source = source
        # "auto" must read every record to decide; a grouped loss then builds its dataset from
        # these parsed records instead of parsing the input a second time
        self._parsed_dataset = (
            load_training_data(source, name="dataset")
            if config.loss in ("auto", "softmax", "distill")
            else None
        )
        self.config = resolve(
            config, records=self._parsed_dataset, model_output_path=self.model_output_path
        )
        self.result: FinetuneResult | None = None

        # Like LlamaIndex's engine, the model is loaded here (errors surface at construction).
        from .modeling import fit_to_data, load_model
        from .trainer import build_evaluator

        self.model = load_model(
            self.model_id,
            device=self.device,
            seed=self.seed,
            lora=self.lora,
            freeze_layers=self.freeze_layers,
            from_encoder=self.from_encoder,
        )
        # The saved tokenizer keeps the base model's limit (training may use a shorter one), so
        # every loader truncates the exported model the way it truncated the base model.
        self._length_limit = model_length_limit(self._hf_model(), self.model.tokenizer)
        # a grouped loss parsed the records already (and reads the rows' texts only); any
        # other loss parses the input here, its labels kept
        parsed = source if self._parsed_dataset is None else self._parsed_dataset
        rows = pointwise_rows(parsed, "dataset")
        self.unk_rate, self._max_length = fit_to_data(
            self.model, rows, self.config, model_id=self.model_id, limit=self._length_limit
        )
        self.rng = random.Random(self.seed)
        self.train_dataset = build_train_dataset(
            parsed,
            loss=self.loss,
            num_negatives=self.num_negatives,
            rng=self.rng,
            what="dataset",
            rows=None if is_grouped(self.loss) else rows,
        )
        self.evaluator = build_evaluator(yardstick or None)

    # -- the options as attributes ------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        config = self.__dict__.get("config")
        if name in _OPTIONS and config is not None:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OPTIONS and "config" in self.__dict__:
            # checked like the constructor's argument; read by the next finetune()
            self.__dict__["config"] = replace(self.__dict__["config"], **{name: value})
        else:
            super().__setattr__(name, value)

    # -- set-up -------------------------------------------------------------------------------

    def _hf_model(self, model: Any = None) -> Any:
        return (model if model is not None else self.model).model

    def _make_loss(self) -> Any:
        from .trainer import make_loss

        return make_loss(self.loss, self.model, self.distill_weight)

    # -- training -----------------------------------------------------------------------------

    def finetune(self, **train_kwargs: Any) -> FinetuneResult:
        """Train, keep the best checkpoint (with a validation set) and save the model.

        Args:
            **train_kwargs: accepted for LlamaIndex compatibility; only ``max_minutes``,
                ``max_steps`` and ``resume_from_checkpoint`` may be given. They apply to this
                run only (the engine's options stay as they were). Anything else raises
                ``TypeError``.

        Returns:
            A :class:`FinetuneResult` (also kept as ``self.result``).
        """
        config = run_config(self.config, train_kwargs)  # checked; for this run only
        from .phases import run
        from .trainer import TrainingDiverged, diverged_error

        try:
            outcome = run(self, config)
        except TrainingDiverged as stop:
            raise diverged_error(stop.detail, config, self.model_output_path) from None
        trainer, seconds, resumed_step = outcome.trainer, outcome.seconds, outcome.resumed_step
        self.model = trainer.model
        best = trainer.state.best_metric
        summary = {
            "base_model": self.model_id,
            "loss": self.loss if isinstance(self.loss, str) else type(self.loss).__name__,
            "global_step": trainer.state.global_step,
            "train_seconds": round(seconds, 1),
            "max_length": self._max_length,
            "best_metric": best,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "decisions": outcome.decisions,
            "held_out": outcome.report.as_dict() if outcome.report else None,
        }
        # under torchrun every rank holds the same weights: one writer, the others wait for it
        if trainer.is_world_process_zero():
            self.save(self.model_output_path, training_summary=summary)
        trainer.accelerator.wait_for_everyone()
        self.result = FinetuneResult(
            output_path=Path(self.model_output_path),
            global_step=trainer.state.global_step,
            train_seconds=seconds,
            stopped_by_time=trainer.budget.stopped,
            best_metric=best,
            resumed_from_step=resumed_step,
            log_history=list(trainer.state.log_history),
            max_length=self._max_length,
            held_out=outcome.report,
            decisions=outcome.decisions,
        )
        return self.result

    # -- what the phases of finetune() read (:mod:`.phases`) -------------------------------------

    @property
    def max_length(self) -> int:
        """Tokens per pair training uses (``max_length`` resolved)."""
        return self._max_length

    def training_records(self) -> list[Any]:
        """The training part of the data as parsed records (held-out queries left out)."""
        from .data import load_training_data

        if self._parsed_dataset is None:
            self._parsed_dataset = load_training_data(self._source, name="dataset")
        return self._parsed_dataset

    def training_passages(self) -> list[str]:
        """Every distinct passage of the training part (BM25's corpus for the yardstick)."""
        records = self.training_records()
        return list(dict.fromkeys(t for r in records for t in (*r.positives, *r.negatives)))

    def grouped(self, loss: Any) -> bool:
        from .recipe import is_grouped

        return is_grouped(loss)

    def save(
        self, path: str | os.PathLike[str], *, training_summary: Mapping[str, Any] | None = None
    ) -> Path:
        """Write the current model as a drop-in folder at ``path`` (atomic replace).

        ``path`` must be new, empty, or a model folder this library wrote (its other files are
        kept); see :mod:`bge_rerank_plugins.finetune.export`.

        Raises:
            RerankerError: the weights hold NaN or infinite values (nothing is written).
            FileExistsError: ``path`` is a non-empty folder this library did not write.
        """
        from .export import export_model
        from .modeling import check_finite

        check_finite(self._hf_model(), path)
        extra = {}
        if training_summary is not None:
            extra["training_summary.json"] = json.dumps(dict(training_summary), indent=2)
        return export_model(
            self._hf_model(),
            self.model.tokenizer,
            path,
            max_length=self._length_limit,
            extra_files=extra or None,
        )

    # -- LlamaIndex API -----------------------------------------------------------------------

    def get_finetuned_model(self, model_name: str | None = None, top_n: int = 3) -> Any:
        """A ready :class:`~bge_rerank_plugins.llama_index.BGEReranker` on the fine-tuned model.

        Args:
            model_name: model folder (or Hub id) to load; default ``model_output_path``.
            top_n: nodes the reranker keeps.
        """
        # the one import of an integration from training: LlamaIndex's API returns its reranker
        from ..llama_index import BGEReranker

        path = model_name or self.model_output_path
        if model_name is None and not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(
                f"No fine-tuned model in {path!r}: call finetune() first (or pass model_name)."
            )
        return BGEReranker(model=str(path), top_n=top_n)

    def push_to_hub(self, repo_id: str | None = None) -> str:
        """Upload the fine-tuned folder to the Hugging Face Hub (needs a token and network).

        Raises:
            ValueError: no ``repo_id`` (as LlamaIndex's engine does).
            RuntimeError: offline (``HF_HUB_OFFLINE``), no model saved yet, or the upload
                failed.
        """
        if repo_id is None or (isinstance(repo_id, str) and not repo_id.strip()):
            raise ValueError("push_to_hub needs repo_id, e.g. 'your-name/my-reranker'.")
        if not isinstance(repo_id, str):
            raise TypeError(
                f"repo_id must be a string such as 'your-name/my-reranker', got {repo_id!r}"
            )
        from .export import push_model_dir

        return push_model_dir(self.model_output_path, repo_id)


def _with_options(function: Any) -> inspect.Signature:
    """``function``'s signature with its ``**options`` spelled out as the keyword-only fields of
    :class:`FinetuneConfig` it does not name already (what ``help()`` and IDEs show)."""
    base = inspect.signature(function)
    params = [p for p in base.parameters.values() if p.kind is not p.VAR_KEYWORD]
    taken = {p.name for p in params}
    params += [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type
        )
        for f in fields(FinetuneConfig)
        if f.name not in taken
    ]
    return base.replace(parameters=params)


CrossEncoderFinetuneEngine.__init__.__signature__ = _with_options(  # type: ignore[attr-defined]
    CrossEncoderFinetuneEngine.__init__
)
# without it, ``__new__`` (routing a causal-LM base) makes help() show (*args, **kwargs)
_SELF, *_PARAMETERS = CrossEncoderFinetuneEngine.__init__.__signature__.parameters.values()
CrossEncoderFinetuneEngine.__signature__ = (  # type: ignore[attr-defined]
    CrossEncoderFinetuneEngine.__init__.__signature__.replace(parameters=_PARAMETERS)
)
