"""``CrossEncoderFinetuneEngine``: fine-tune a cross-encoder reranker on your own data.

The constructor and methods are those of LlamaIndex's engine of the same name
(``llama_index.finetuning.cross_encoders.cross_encoder.CrossEncoderFinetuneEngine``), so code
written for it runs after swapping the import; the ``loss`` argument is honoured here. Training
runs on sentence-transformers' ``CrossEncoderTrainer`` (a Hugging Face ``Trainer``): progress
bars, logging, mixed precision, gradient accumulation, checkpoints and resuming come from it.

Beyond LlamaIndex's API (keyword-only): learning rates (a separate, higher one for the freshly
initialised head), warm-up, weight decay, ``max_length`` ("auto"), precision, seed, gradient
accumulation, freezing lower layers, LoRA (merged on export), early stopping, a wall-clock
budget, and resuming from a checkpoint. The result in ``model_output_path`` is a plain Hugging
Face model folder, written atomically (:mod:`bge_rerank_plugins.finetune.export`).

Data: a list of LlamaIndex ``CrossEncoderFinetuningDatasetSample`` (anything with ``query``,
``context``, ``score`` attributes or keys) or grouped records (``query``, ``positives``,
``negatives`` and optionally ``positive_scores``/``negative_scores`` (teacher scores), e.g.
:class:`~bge_rerank_plugins.finetune.data.TrainingGroup`). The grouped losses train on
groups (one positive + ``num_negatives`` negatives): pointwise samples are grouped by query,
and a query without enough negatives borrows random passages of other queries.
The default loss, ``"auto"``, is ``"distill"`` (grouped softmax plus a KL term to the teacher
scores) when every training record carries teacher scores, and ``"softmax"`` otherwise.

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

import json
import logging
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["DEFAULTS", "CrossEncoderFinetuneEngine", "FinetuneResult"]

_LOSSES = ("auto", "softmax", "bce", "distill")
_PRECISIONS = ("auto", "fp32", "fp16", "bf16")

#: The engine's defaults: the recipe measured on SciFact with the MiniLM cross-encoder on a
#: 2-core CPU (docs/finetuning.md). Keyword arguments of the constructor override them.
DEFAULTS: dict[str, Any] = {
    "loss": "auto",
    "num_negatives": 3,
    "learning_rate": 2e-4,
    "head_learning_rate": 2e-3,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "max_length": "auto",
    "auto_max_length_cpu": 192,
    "auto_max_length": 512,
}


@dataclass
class _Group:
    query: str
    docs: list[str]
    labels: list[float]
    teacher: list[float] | None = None
    #: every negative of the query (and its teacher scores): ``docs[1:]`` is redrawn from it
    #: each time the group is read, so each epoch sees other hard negatives
    pool: list[str] | None = None
    pool_teacher: list[float] | None = None


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


def _get(sample: Any, name: str, default: Any = None) -> Any:
    if isinstance(sample, Mapping):
        return sample.get(name, default)
    return getattr(sample, name, default)


def _pointwise(dataset: Sequence[Any], what: str) -> list[tuple[str, str, float]]:
    """(query, passage, label) rows; LlamaIndex samples keep their own score as the label.

    Every record goes through :mod:`.data`'s validation (non-empty texts, finite labels,
    conflicting repeats), LlamaIndex samples included; errors name ``what[index]``.
    """
    from .data import from_llama_index_samples, groups_to_pointwise

    if all(_get(s, "context") is not None and _get(s, "score") is not None for s in dataset):
        rows = from_llama_index_samples(dataset, name=what)
    else:
        rows = groups_to_pointwise(_records(dataset, what))
    return [(r.query, r.passage, r.label) for r in rows]


def _records(dataset: Sequence[Any], what: str) -> list[Any]:
    """Any supported input format as :class:`~.data.TrainingGroup` records (validated)."""
    from .data import load_training_data

    return load_training_data(dataset, name=what)


def _first_non_finite(model: Any) -> str | None:
    """The name of the first parameter holding a NaN or an infinity, or None."""
    import torch

    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param.detach()).all()):
            return name
    return None


class _Diverged(Exception):
    """Raised inside the trainer on a NaN or infinite loss or weights (re-raised as a
    RerankerError by ``finetune``); ``detail`` says what and at which step."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _groups(
    dataset: Sequence[Any], num_negatives: int, rng: random.Random, what: str
) -> list[_Group]:
    """One group per positive: the positive first, then ``num_negatives`` negatives.

    Negatives are drawn from the query's own negatives; a query with too few borrows random
    passages of other queries. A query with more negatives than ``num_negatives`` keeps them
    all as its pool, from which :func:`_redraw_negatives` samples anew on every read. With
    teacher scores (``positive_scores``/``negative_scores``) the group carries them for
    distillation.
    """
    records = _records(dataset, what)
    by_query: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = by_query.setdefault(record.query, {"pos": [], "neg": [], "teacher": {}})
        entry["pos"] += list(record.positives)
        entry["neg"] += list(record.negatives)
        if record.has_scores:
            texts = [*record.positives, *record.negatives]
            scores = [*record.positive_scores, *record.negative_scores]
            entry["teacher"].update(zip(texts, map(float, scores)))
    pool = sorted({t for e in by_query.values() for t in e["pos"] + e["neg"]})
    groups: list[_Group] = []
    borrowed = 0
    for query, entry in by_query.items():
        own = set(entry["pos"])
        negatives = [n for n in dict.fromkeys(entry["neg"]) if n not in own]
        for positive in dict.fromkeys(entry["pos"]):
            if len(negatives) >= num_negatives:
                chosen = rng.sample(negatives, num_negatives)
            else:
                chosen = list(negatives)
                taken = own | set(chosen)
                # rejection sampling from the pool: cheap for large data, bounded for tiny data
                for _ in range(20 * num_negatives):
                    if len(chosen) >= num_negatives or len(taken) >= len(pool):
                        break
                    text = pool[rng.randrange(len(pool))]
                    if text not in taken:
                        taken.add(text)
                        chosen.append(text)
                        borrowed += 1
            if not chosen:
                continue
            docs = [positive, *chosen]
            teacher = pool_teacher = None
            if entry["teacher"]:
                floor = min(entry["teacher"].values())
                teacher = [entry["teacher"].get(d, floor) for d in docs]
                pool_teacher = [entry["teacher"].get(d, floor) for d in negatives]
            group = _Group(query, docs, [1.0] + [0.0] * len(chosen), teacher)
            if len(negatives) > num_negatives:
                group.pool, group.pool_teacher = negatives, pool_teacher
            groups.append(group)
    if borrowed:
        logger.info("Borrowed %d random negatives from other queries.", borrowed)
    if not groups:
        raise ValueError(
            f"{what} has no query with a positive passage (label >= 0.5) and a negative one; "
            "the grouped 'softmax' loss needs both (or use loss='bce')."
        )
    return groups


def _redraw_negatives(num_negatives: int, rng: random.Random) -> Any:
    """A ``datasets`` transform that draws fresh negatives from each group's pool per read.

    With fixed negatives a small training set is memorised within a few epochs (measured on
    SciFact: the training loss reached 0.001 while dev nDCG@10 fell); a new draw per epoch
    shows the model many more of the query's hard negatives at no extra cost per step.
    """

    def transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"query": batch["query"], "docs": [], "label": batch["label"]}
        has_teacher = "teacher" in batch
        if has_teacher:
            out["teacher"] = []
        for row, docs in enumerate(batch["docs"]):
            pool = batch["pool"][row]
            teacher = batch["teacher"][row] if has_teacher else None
            if pool:
                picks = rng.sample(range(len(pool)), num_negatives)
                docs = [docs[0], *(pool[i] for i in picks)]
                if teacher is not None:
                    pool_teacher = batch["pool_teacher"][row]
                    teacher = [teacher[0], *(pool_teacher[i] for i in picks)]
            out["docs"].append(docs)
            if has_teacher:
                out["teacher"].append(teacher)
        # the column order the loss expects: query, docs[, teacher], label
        return {k: out[k] for k in ("query", "docs", "teacher", "label") if k in out}

    return transform


def _resolve_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


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
        loss: ``"auto"`` (default: ``"distill"`` when every training record carries teacher
            scores, else ``"softmax"``), ``"softmax"`` (grouped softmax cross-entropy),
            ``"bce"`` (pointwise, LlamaIndex's objective), ``"distill"`` (softmax + KL to the
            teacher scores of the groups), or a sentence-transformers cross-encoder loss
            instance / a callable ``model -> loss`` trained on pointwise (query, context,
            score) rows. ``self.loss`` holds the resolved choice.
        epochs: passes over the training data.
        show_progress_bar: tqdm bars during training.
        evaluation_steps: evaluate (and checkpoint) every this many steps.
        learning_rate: learning rate of the encoder.
        head_learning_rate: learning rate of the classification head and pooler (fresh layers
            learn much faster with a higher rate); None uses ``learning_rate``.
        warmup_ratio: fraction of the steps with a linear warm-up.
        weight_decay: AdamW weight decay (not on biases and LayerNorm).
        max_length: tokens per (query, passage) pair: an int, or "auto" (the 95th percentile of
            the training pairs, capped at 192 on CPU and 512 on an accelerator).
        precision: "auto" (bf16/fp16 on a GPU that supports it; bf16 autocast on a CPU with
            bf16 hardware, AVX512-BF16 or AMX; fp32 otherwise), "fp32", "fp16" (GPU only),
            "bf16".
        seed: seeds sampling, initialisation and data order.
        gradient_accumulation_steps: micro-batches per optimizer step.
        freeze_layers: freeze the embeddings and the lowest N transformer layers.
        lora: train LoRA adapters (``peft``) instead of all weights; ``True`` or a dict of
            ``peft.LoraConfig`` arguments. Merged into the weights on export.
        num_negatives: negatives per group for the softmax losses; a query with more negatives
            than this gets a fresh draw from all of them each time its group is read (each
            epoch), which keeps a small training set from being memorised.
        distill_weight: weight of the teacher KL term for ``loss="distill"``.
        early_stopping_patience: stop after this many evaluations without improvement.
        resume_from_checkpoint: True (latest checkpoint in ``checkpoint_dir``) or a path.
        checkpoint_dir: where checkpoints go; default ``<model_output_path>-checkpoints``.
        checkpoint_steps: save a checkpoint every N steps (default ``evaluation_steps``).
        save_total_limit: checkpoints kept (the best one is always kept).
        max_steps: stop after this many optimizer steps (overrides ``epochs``).
        max_minutes: stop training after this wall-clock budget; the learning-rate schedule
            decays over the budget so the last steps use a small rate.
        logging_steps: log loss and learning rate every N steps.
        device: "cpu", "cuda", ... (default: the best available).
        unk_warning_threshold: warn when the tokenizer maps more than this share of the
            training tokens to the unknown token (a model without the data's vocabulary).

    Example:
        >>> engine = CrossEncoderFinetuneEngine(
        ...     train_samples, model_id="BAAI/bge-reranker-v2-m3", model_output_path="out",
        ...     val_dataset=val_samples, max_minutes=30)  # doctest: +SKIP
    """

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
        *,
        learning_rate: float = DEFAULTS["learning_rate"],
        head_learning_rate: float | None = DEFAULTS["head_learning_rate"],
        warmup_ratio: float = DEFAULTS["warmup_ratio"],
        weight_decay: float = DEFAULTS["weight_decay"],
        max_length: int | str = DEFAULTS["max_length"],
        precision: str = "auto",
        seed: int = 0,
        gradient_accumulation_steps: int = 1,
        freeze_layers: int = 0,
        lora: bool | Mapping[str, Any] = False,
        num_negatives: int = DEFAULTS["num_negatives"],
        distill_weight: float = 0.5,
        early_stopping_patience: int | None = None,
        resume_from_checkpoint: bool | str | os.PathLike[str] | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_steps: int | None = None,
        save_total_limit: int = 2,
        max_steps: int | None = None,
        max_minutes: float | None = None,
        logging_steps: int = 10,
        device: str | None = None,
        unk_warning_threshold: float = 0.2,
    ) -> None:
        if not dataset:
            raise ValueError("dataset is empty: give at least one training sample.")
        for name, value in (("batch_size", batch_size), ("epochs", epochs)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}.")
        if int(evaluation_steps) < 1:
            raise ValueError(f"evaluation_steps must be >= 1, got {evaluation_steps!r}.")
        if int(gradient_accumulation_steps) < 1:
            raise ValueError(
                f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps!r}."
            )
        if int(num_negatives) < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives!r}.")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}.")
        if isinstance(loss, str) and loss not in _LOSSES:
            raise ValueError(
                f"loss must be one of {_LOSSES}, a sentence-transformers loss or a callable; "
                f"got {loss!r}."
            )
        if not (max_length == "auto" or (isinstance(max_length, int) and max_length > 8)):
            raise ValueError(f"max_length must be an int > 8 or 'auto', got {max_length!r}.")
        if max_minutes is not None and max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0, got {max_minutes!r}.")
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be within [0, 1), got {warmup_ratio!r}.")
        if freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {freeze_layers!r}.")
        from .export import check_output_dir

        # before any training: a folder that cannot take the model is refused now, not after
        # hours of training (and nothing in it is ever deleted)
        check_output_dir(model_output_path, "model_output_path")

        self.dataset = list(dataset)
        self.model_id = str(model_id)
        self.model_output_path = str(model_output_path)
        self.batch_size = int(batch_size)
        self.val_dataset = list(val_dataset) if val_dataset is not None else None
        loss = DEFAULTS["loss"] if loss is None else loss
        # "auto" must read every record to decide; a grouped loss then builds its dataset from
        # these parsed records instead of parsing the input a second time
        self._parsed_dataset = (
            _records(self.dataset, "dataset") if loss in ("auto", "softmax", "distill") else None
        )
        self.loss = self._resolve_loss(loss, self._parsed_dataset)
        self.epochs = int(epochs)
        self.show_progress_bar = bool(show_progress_bar)
        self.evaluation_steps = int(evaluation_steps)
        self.learning_rate = float(learning_rate)
        self.head_learning_rate = head_learning_rate
        self.warmup_ratio = float(warmup_ratio)
        self.weight_decay = float(weight_decay)
        self.max_length = max_length
        self.precision = precision
        self.seed = int(seed)
        self.gradient_accumulation_steps = int(gradient_accumulation_steps)
        self.freeze_layers = int(freeze_layers)
        self.lora = lora
        self.num_negatives = int(num_negatives)
        self.distill_weight = float(distill_weight)
        self.early_stopping_patience = early_stopping_patience
        self.resume_from_checkpoint = resume_from_checkpoint
        self.checkpoint_dir = str(
            checkpoint_dir
            if checkpoint_dir is not None
            else Path(self.model_output_path).with_name(
                Path(self.model_output_path).name + "-checkpoints"
            )
        )
        self.checkpoint_steps = int(checkpoint_steps or evaluation_steps)
        self.save_total_limit = int(save_total_limit)
        self.max_steps = max_steps
        self.max_minutes = max_minutes
        self.logging_steps = int(logging_steps)
        self.device = device or _resolve_device()
        self.unk_warning_threshold = float(unk_warning_threshold)
        self.result: FinetuneResult | None = None

        # Like LlamaIndex's engine, the model is loaded here (errors surface at construction).
        self.model = self._load_model()
        # The saved tokenizer keeps the base model's limit (training may use a shorter one), so
        # every loader truncates the exported model the way it truncated the base model.
        self._export_max_length = getattr(self.model.tokenizer, "model_max_length", None)
        self.unk_rate = self._check_vocabulary()
        self._max_length = self._resolve_max_length()
        self.model.max_length = self._max_length
        self._rng = random.Random(self.seed)
        self.train_dataset = self._build_dataset(
            self.dataset if self._parsed_dataset is None else self._parsed_dataset, "dataset"
        )
        self.evaluator = self._build_evaluator()

    # -- set-up -----------------------------------------------------------------------------

    def _load_model(self) -> Any:
        try:
            from sentence_transformers.cross_encoder import CrossEncoder
        except ImportError as error:  # pragma: no cover - depends on the install
            raise ImportError(
                "Fine-tuning needs sentence-transformers, datasets and accelerate: "
                "pip install 'bge-rerank-plugins[finetune]'."
            ) from error
        from transformers import set_seed

        set_seed(self.seed)
        try:
            model = CrossEncoder(self.model_id, num_labels=1, device=self.device)
        except OSError as error:
            from ..errors import ModelNotFoundError

            raise ModelNotFoundError(
                f"Cannot load model_id={self.model_id!r}: {error}. Give a local model folder or "
                "a Hub id that is in the local cache when offline."
            ) from error
        if getattr(model, "num_labels", 1) != 1:
            raise ValueError(
                f"model_id={self.model_id!r} has {model.num_labels} output labels; a reranker "
                "needs a single relevance logit (num_labels=1)."
            )
        self._prepare_parameters(model)
        return model

    def _hf_model(self, model: Any = None) -> Any:
        model = model if model is not None else self.model
        return model.model

    def _prepare_parameters(self, model: Any) -> None:
        hf = self._hf_model(model)
        if self.lora:
            from peft import LoraConfig, TaskType, get_peft_model

            options = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
            if isinstance(self.lora, Mapping):
                options.update(self.lora)
            options.setdefault("modules_to_save", ["classifier", "pooler", "score"])
            config = LoraConfig(task_type=TaskType.SEQ_CLS, **options)
            wrapped = get_peft_model(hf, config)
            model[0].model = wrapped
            logger.info("LoRA: %s", config)
        if self.freeze_layers:
            base = getattr(hf, "base_model", hf)
            names = []
            for name, param in base.named_parameters():
                layer = _layer_index(name)
                if "embeddings" in name or (layer is not None and layer < self.freeze_layers):
                    param.requires_grad_(False)
                    names.append(name)
            logger.info(
                "Froze %d tensors (embeddings + %d layers).", len(names), self.freeze_layers
            )

    def _dataset_rows(self) -> list[tuple[str, str, float]]:
        """The training data as validated pointwise rows, parsed once (warnings logged once)."""
        if getattr(self, "_rows", None) is None:
            # a grouped loss parsed the records already (and reads the rows' texts only); any
            # other loss parses the input here, its labels kept
            source = self.dataset if self._parsed_dataset is None else self._parsed_dataset
            self._rows = _pointwise(source, "dataset")
        return self._rows

    def _sample_pairs(self, limit: int = 1000) -> list[tuple[str, str, float]]:
        if getattr(self, "_pairs_sample", None) is None:
            rows = self._dataset_rows()
            self._pairs_sample = random.Random(self.seed).sample(rows, min(limit, len(rows)))
        return self._pairs_sample

    def _check_vocabulary(self) -> float:
        """Share of the training tokens the tokenizer maps to its unknown token (warns)."""
        tokenizer = self.model.tokenizer
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is None:
            return 0.0
        texts = [t for q, p, _ in self._sample_pairs(400) for t in (q, p)]
        encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=256)
        total = sum(len(ids) for ids in encoded["input_ids"])
        unknown = sum(ids.count(unk) for ids in encoded["input_ids"])
        rate = unknown / total if total else 0.0
        if rate > self.unk_warning_threshold:
            logger.warning(
                "The tokenizer of %s maps %.0f%% of the training tokens to its unknown token: "
                "the model lacks the vocabulary of this data (e.g. an English model on Chinese "
                "text) and fine-tuning cannot fix that. Use a multilingual base such as "
                "BAAI/bge-reranker-v2-m3.",
                self.model_id,
                100 * rate,
            )
        return rate

    def _resolve_max_length(self) -> int:
        tokenizer = self.model.tokenizer
        limit = int(getattr(tokenizer, "model_max_length", 512) or 512)
        limit = 512 if limit > 100_000 else limit
        if self.max_length != "auto":
            return min(int(self.max_length), limit)
        cap = DEFAULTS["auto_max_length_cpu" if self.device == "cpu" else "auto_max_length"]
        pairs = self._sample_pairs()
        encoded = tokenizer(
            [q for q, _, _ in pairs], [p for _, p, _ in pairs], truncation=True, max_length=limit
        )
        lengths = sorted(len(ids) for ids in encoded["input_ids"])
        p95 = lengths[int(0.95 * (len(lengths) - 1))] if lengths else cap
        chosen = min(cap, limit, max(32, int(math.ceil(p95 / 16) * 16)))
        logger.info("max_length='auto' -> %d tokens (p95 of the pairs: %d).", chosen, p95)
        return chosen

    @staticmethod
    def _resolve_loss(loss: Any, records: Sequence[Any] | None) -> Any:
        """``"auto"`` -> ``"distill"`` when every record has teacher scores, else ``"softmax"``.

        Distillation won every comparison on SciFact with the small CPU budget (docs/finetuning.md),
        so data that brings teacher scores trains with them unless told otherwise.
        """
        if loss != "auto":
            return loss
        assert records is not None  # parsed whenever the loss is "auto" or grouped
        chosen = "distill" if all(r.has_scores for r in records) else "softmax"
        logger.info(
            "loss='auto' -> %r (%s).",
            chosen,
            "every training record carries teacher scores"
            if chosen == "distill"
            else "no teacher scores on the training records",
        )
        return chosen

    def _grouped(self) -> bool:
        return isinstance(self.loss, str) and self.loss in ("softmax", "distill")

    def _build_dataset(self, samples: Sequence[Any], what: str) -> Any:
        from datasets import Dataset

        if self._grouped():
            groups = _groups(samples, self.num_negatives, self._rng, what)
            columns: dict[str, list[Any]] = {
                "query": [g.query for g in groups],
                "docs": [g.docs for g in groups],
            }
            if self.loss == "distill":
                if any(g.teacher is None for g in groups):
                    raise ValueError(
                        "loss='distill' needs teacher scores (positive_scores and negative_scores) "
                        f"on every record of {what}."
                    )
                columns["teacher"] = [g.teacher for g in groups]
            columns["label"] = [g.labels for g in groups]
            columns["pool"] = [g.pool or [] for g in groups]
            if self.loss == "distill":
                columns["pool_teacher"] = [g.pool_teacher or [] for g in groups]
            dataset = Dataset.from_dict(columns)
            dataset.set_transform(_redraw_negatives(self.num_negatives, self._rng))
            return dataset
        rows = self._dataset_rows() if samples is self.dataset else _pointwise(samples, what)
        return Dataset.from_dict(
            {
                "query": [q for q, _, _ in rows],
                "context": [c for _, c, _ in rows],
                "label": [s for _, _, s in rows],
            }
        )

    def _build_evaluator(self) -> Any:
        if not self.val_dataset:
            return None
        from sentence_transformers.cross_encoder.evaluation import (
            CrossEncoderRerankingEvaluator,
        )

        by_query: dict[str, dict[str, list[str]]] = {}
        for query, text, score in _pointwise(self.val_dataset, "val_dataset"):
            entry = by_query.setdefault(query, {"positive": [], "negative": []})
            entry["positive" if score > 0.5 else "negative"].append(text)
        samples = [
            {"query": q, "positive": e["positive"], "negative": e["negative"]}
            for q, e in by_query.items()
            if e["positive"] and e["negative"]
        ]
        if not samples:
            raise ValueError(
                "val_dataset has no query with both a positive (score > 0.5) and a negative "
                "passage, so no ranking metric can be computed."
            )
        return CrossEncoderRerankingEvaluator(
            samples, at_k=10, name="val", batch_size=32, write_csv=False
        )

    def _make_loss(self) -> Any:
        from sentence_transformers.cross_encoder import losses

        from .losses import GroupedSoftmaxLoss

        if self.loss == "softmax":
            return GroupedSoftmaxLoss(self.model)
        if self.loss == "distill":
            return GroupedSoftmaxLoss(self.model, distill_weight=self.distill_weight)
        if self.loss == "bce":
            return losses.BinaryCrossEntropyLoss(self.model)
        if callable(self.loss) and not hasattr(self.loss, "forward"):
            return self.loss(self.model)
        if getattr(self.loss, "model", None) is not None and self.loss.model is not self.model:
            self.loss.model = self.model
        return self.loss

    def _mixed_precision(self) -> dict[str, bool]:
        import torch

        from ..loading import cpu_bf16_autocast

        if self.precision == "fp32":
            return {}
        if self.device == "cpu":
            # Mixed precision keeps fp32 master weights, so only the speed changes; a CPU
            # without bf16 hardware emulates it and would be slower than fp32.
            if cpu_bf16_autocast(self.precision):
                return {"bf16": True}
            if self.precision == "fp16":
                logger.warning("precision='fp16' is not used on CPU; training in fp32.")
            return {}
        if self.precision == "fp16":
            return {"fp16": True}
        if self.precision == "bf16":
            return {"bf16": True}
        if self.device.startswith("cuda") and torch.cuda.is_available():
            if torch.cuda.is_bf16_supported():
                return {"bf16": True}
            return {"fp16": True}
        return {}

    # -- training ---------------------------------------------------------------------------

    def finetune(self, **train_kwargs: Any) -> FinetuneResult:
        """Train, keep the best checkpoint (with a validation set) and save the model.

        Args:
            **train_kwargs: accepted for LlamaIndex compatibility; only ``max_minutes``,
                ``max_steps`` and ``resume_from_checkpoint`` may be given (they override the
                constructor's values). Anything else raises ``TypeError``.

        Returns:
            A :class:`FinetuneResult` (also kept as ``self.result``).
        """
        allowed = {"max_minutes", "max_steps", "resume_from_checkpoint"}
        unknown = sorted(set(train_kwargs) - allowed)
        if unknown:
            raise TypeError(
                f"finetune() got unexpected arguments {unknown}; pass training options to the "
                f"constructor (finetune accepts only {sorted(allowed)})."
            )
        for name, value in train_kwargs.items():
            setattr(self, name, value)

        import torch
        from sentence_transformers.cross_encoder import CrossEncoderTrainer
        from sentence_transformers.cross_encoder.training_args import (
            CrossEncoderTrainingArguments,
        )
        from transformers import EarlyStoppingCallback, TrainerCallback

        engine = self
        budget_s = self.max_minutes * 60 if self.max_minutes else None
        clock: dict[str, float] = {"start": time.time(), "stopped": 0.0}

        class _Budget(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
                clock["start"] = time.time()

            def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
                if budget_s is not None and time.time() - clock["start"] >= budget_s:
                    clock["stopped"] = 1.0
                    control.should_training_stop = True
                    if engine.evaluator is not None:
                        control.should_evaluate = True
                        control.should_save = True

        class _Trainer(CrossEncoderTrainer):
            def compute_loss(
                self,
                model: Any,
                inputs: Any,
                return_outputs: bool = False,
                num_items_in_batch: Any = None,
            ) -> Any:
                result = super().compute_loss(
                    model, inputs, return_outputs, num_items_in_batch=num_items_in_batch
                )
                loss = result[0] if return_outputs else result
                # one scalar check per micro-step (the trainer syncs on the loss anyway); raised
                # before backward, so the weights are still those of the last good step
                if model.training and not bool(torch.isfinite(loss.detach()).all()):
                    step = self.state.global_step + 1
                    raise _Diverged(f"the loss is {float(loss.detach())} at optimizer step {step}")
                return result

            def _save_checkpoint(self, model: Any, trial: Any) -> None:
                bad = _first_non_finite(self.model)
                if bad is not None:  # never checkpoint broken weights
                    raise _Diverged(
                        f"parameter {bad!r} holds NaN or infinite values after optimizer step "
                        f"{self.state.global_step}"
                    )
                super()._save_checkpoint(model, trial)

            def create_optimizer(self, model: Any = None) -> Any:
                if self.optimizer is not None:
                    return self.optimizer
                head_lr = engine.head_learning_rate or engine.learning_rate
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
                    {"params": groups["decay"], "weight_decay": engine.weight_decay},
                    {"params": groups["no_decay"], "weight_decay": 0.0},
                    {"params": groups["head"], "weight_decay": 0.0, "lr": head_lr},
                ]
                specs = [s for s in specs if s["params"]]
                for spec in specs:
                    spec.setdefault("lr", engine.learning_rate)
                self.optimizer = torch.optim.AdamW(specs, lr=engine.learning_rate)
                return self.optimizer

            def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
                if self.lr_scheduler is not None:
                    return self.lr_scheduler
                warmup = max(1, int(engine.warmup_ratio * num_training_steps))

                def factor(step: int) -> float:
                    progress = step / max(1, num_training_steps)
                    if budget_s is not None:
                        progress = max(progress, (time.time() - clock["start"]) / budget_s)
                        warm = (
                            min(1.0, progress / engine.warmup_ratio) if engine.warmup_ratio else 1.0
                        )
                    else:
                        warm = min(1.0, (step + 1) / warmup) if engine.warmup_ratio else 1.0
                    if warm < 1.0:
                        return max(warm, 1e-3)
                    return max(0.0, 1.0 - progress) / max(1e-9, 1.0 - 0.0)

                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer, factor
                )
                return self.lr_scheduler

        has_val = self.evaluator is not None
        metric = "eval_val_mrr@10"
        args_kwargs: dict[str, Any] = {
            "output_dir": self.checkpoint_dir,
            "num_train_epochs": self.epochs,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "logging_steps": self.logging_steps,
            "save_strategy": "steps",
            "save_steps": self.checkpoint_steps,
            "save_total_limit": self.save_total_limit,
            "seed": self.seed,
            "data_seed": self.seed,
            "report_to": "none",
            "disable_tqdm": not self.show_progress_bar,
            "use_cpu": self.device == "cpu",
            "dataloader_drop_last": False,
            # every trainable weight of a sequence classifier gets a gradient each step; DDP's
            # unused-parameter search (on by default for a non-transformers model) breaks here
            "ddp_find_unused_parameters": False,
            **self._mixed_precision(),
        }
        if self.max_steps:
            args_kwargs["max_steps"] = int(self.max_steps)
        if has_val:
            args_kwargs.update(
                eval_strategy="steps",
                eval_steps=self.evaluation_steps,
                save_steps=self.evaluation_steps,
                load_best_model_at_end=True,
                metric_for_best_model=metric,
                greater_is_better=True,
            )
        args = CrossEncoderTrainingArguments(**args_kwargs)
        callbacks: list[Any] = [_Budget()]
        if self.early_stopping_patience and has_val:
            callbacks.append(EarlyStoppingCallback(self.early_stopping_patience))
        elif self.early_stopping_patience:
            logger.warning("early_stopping_patience needs a val_dataset; ignoring it.")
        trainer = _Trainer(
            model=self.model,
            args=args,
            train_dataset=self.train_dataset,
            loss=self._make_loss(),
            evaluator=self.evaluator,
            callbacks=callbacks,
        )
        resume = self.resume_from_checkpoint
        if resume is True:
            resume = _latest_checkpoint(self.checkpoint_dir)
            if resume is None:
                logger.warning("No checkpoint in %s; training from scratch.", self.checkpoint_dir)
        resumed_step = None
        if resume:
            state_file = Path(resume) / "trainer_state.json"
            if not state_file.is_file():
                raise FileNotFoundError(
                    f"resume_from_checkpoint={str(resume)!r} is not a checkpoint folder "
                    "(no trainer_state.json); pass True to pick the latest in checkpoint_dir."
                )
            resumed_step = int(json.loads(state_file.read_text())["global_step"])
            logger.info("Resuming from %s (step %d).", resume, resumed_step)
        started = time.time()
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except _Diverged as stop:
            raise self._diverged(stop.detail) from None
        seconds = time.time() - started
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
        }
        # under torchrun every rank holds the same weights: one writer, the others wait for it
        if trainer.is_world_process_zero():
            self.save(self.model_output_path, training_summary=summary)
        trainer.accelerator.wait_for_everyone()
        self.result = FinetuneResult(
            output_path=Path(self.model_output_path),
            global_step=trainer.state.global_step,
            train_seconds=seconds,
            stopped_by_time=bool(clock["stopped"]),
            best_metric=best,
            resumed_from_step=resumed_step,
            log_history=list(trainer.state.log_history),
            max_length=self._max_length,
        )
        return self.result

    def _diverged(self, detail: str) -> Exception:
        """The error for a training run whose loss (or weights) stopped being finite."""
        from ..errors import RerankerError

        last = _latest_checkpoint(self.checkpoint_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
        return RerankerError(
            f"Training stopped: {detail} (not finite). Nothing was written to "
            f"model_output_path={self.model_output_path!r} (a model already there is kept); "
            f"{kept}. Usual causes: a learning rate too high (learning_rate="
            f"{self.learning_rate:g}, head_learning_rate={self.head_learning_rate}), fp16 "
            "overflow (try precision='bf16' or 'fp32'), or a custom loss that returns NaN."
        )

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
        from ..errors import RerankerError
        from .export import export_model

        bad = _first_non_finite(self._hf_model())
        if bad is not None:
            raise RerankerError(
                f"Refusing to save to {str(path)!r}: parameter {bad!r} holds NaN or infinite "
                "values (a diverged training run); the folder is left as it was."
            )

        extra = {}
        if training_summary is not None:
            extra["training_summary.json"] = json.dumps(dict(training_summary), indent=2)
        limit = self._export_max_length
        return export_model(
            self._hf_model(),
            self.model.tokenizer,
            path,
            max_length=limit if limit and limit < 100_000 else None,
            extra_files=extra or None,
        )

    # -- LlamaIndex API ---------------------------------------------------------------------

    def get_finetuned_model(self, model_name: str | None = None, top_n: int = 3) -> Any:
        """A ready :class:`~bge_rerank_plugins.llama_index.BGEReranker` on the fine-tuned model.

        Args:
            model_name: model folder (or Hub id) to load; default ``model_output_path``.
            top_n: nodes the reranker keeps.
        """
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
            RuntimeError: offline (``HF_HUB_OFFLINE``), no model saved yet, or no repo_id.
        """
        if not repo_id:
            raise RuntimeError("push_to_hub needs repo_id, e.g. 'your-name/my-reranker'.")
        path = Path(self.model_output_path)
        if not (path / "config.json").is_file():
            raise RuntimeError(f"No fine-tuned model in {path}: call finetune() first.")
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise RuntimeError(
                "Cannot push to the Hub: HF_HUB_OFFLINE is set. Unset it, log in with "
                "`hf auth login`, then call push_to_hub again (or upload the folder "
                f"{path} yourself)."
            )
        from huggingface_hub import HfApi

        api = HfApi()
        try:
            api.create_repo(repo_id, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(path))
        except Exception as error:
            raise RuntimeError(f"push_to_hub({repo_id!r}) failed: {error}") from error
        return f"https://huggingface.co/{repo_id}"


def _is_head(name: str) -> bool:
    return any(part in name for part in ("classifier", "pooler", ".score.", "score.weight"))


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layer", "layers") and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def _latest_checkpoint(folder: str | os.PathLike[str]) -> str | None:
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
