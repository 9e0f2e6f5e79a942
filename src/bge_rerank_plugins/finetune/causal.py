"""LoRA fine-tuning of causal-LM rerankers on their own score: FlagEmbedding's decoder-only recipe.

A causal reranker (``BAAI/bge-reranker-v2-gemma``, Qwen3-Reranker) scores a pair by one or two
next-token logits at the last token of its prompt (:mod:`bge_rerank_plugins.runtime.causal_family`).
:func:`finetune_causal_reranker` trains exactly that score:

* every (query, passage) pair is tokenized by the scorer's own encoder for the family
  (:mod:`~bge_rerank_plugins.runtime.causal_prompts`), so training and scoring see the same
  tokens, and the score is the family's (``Yes``'s logit; ``logit(yes) - logit(no)``);
* the loss is FlagEmbedding's: a softmax cross-entropy over each group (one positive, then
  ``num_negatives`` negatives, redrawn from the query's negatives on every read), the positive
  being the target;
* LoRA adapters (``peft``) are trained with a Hugging Face ``Trainer``, then merged into the
  weights; the result is a plain model folder (:mod:`.causal_export`) that
  :class:`~bge_rerank_plugins.CrossEncoderScorer` and FlagEmbedding's ``FlagLLMReranker`` (or
  sentence-transformers, for a LogitScore layout) load as they loaded the base.

>>> from bge_rerank_plugins.finetune.causal import finetune_causal_reranker
>>> finetune_causal_reranker(
...     [{"query": "q", "positives": ["relevant"], "negatives": ["other"]}],
...     "BAAI/bge-reranker-v2-gemma", "out", max_steps=100)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = [
    "CAUSAL_FAMILIES",
    "CausalFinetuneResult",
    "finetune_causal_reranker",
]

logger = logging.getLogger(__name__)

#: The families this module trains (the scorer's causal-LM families).
CAUSAL_FAMILIES = ("bge-decoder-only", "causal-yes-no")


_LORA_DEFAULTS: dict[str, Any] = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05}
_DTYPES = ("float32", "bfloat16")


@dataclass
class CausalFinetuneResult:
    """What :func:`finetune_causal_reranker` did.

    Attributes:
        output_path: the saved model folder.
        family: the family trained (and that the folder is detected as).
        global_step: optimizer steps done.
        train_seconds: wall time of the training loop.
        losses: the training loss at each logged step (``logging_steps``), in order.
        log_history: the trainer's log entries.
        max_length: tokens per (query, passage) pair the model was trained at.
        instruction: the prompt trained with (None: the family's default); score with the same
            ``instruction=``.
        stopped_by_time: True when ``max_minutes`` ended training.
    """

    output_path: Path
    family: str
    global_step: int
    train_seconds: float
    losses: list[float] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    max_length: int = 512
    instruction: str | None = None
    stopped_by_time: bool = False


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return value


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    """Refuse a ``value`` that is not a number in ``[low, high)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if not low <= value < high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}), got {value!r}.")


def _check_arguments(options: Mapping[str, Any]) -> dict[str, Any]:
    """The LoRA options, after checking every argument (errors name the argument)."""
    for name in ("epochs", "batch_size", "num_negatives", "gradient_accumulation_steps"):
        _positive_int(name, options[name])
    _positive_int("max_steps", options["max_steps"], allow_none=True)
    _positive_int("logging_steps", options["logging_steps"])
    length = options["max_length"]
    if isinstance(length, bool) or not isinstance(length, int) or length <= 8:
        raise ValueError(f"max_length must be an int > 8, got {length!r}.")
    _check_number("learning_rate", options["learning_rate"], 0.0, math.inf)
    if options["learning_rate"] == 0:
        raise ValueError("learning_rate must be > 0, got 0.")
    _check_number("warmup_ratio", options["warmup_ratio"], 0.0, 1.0)
    _check_number("weight_decay", options["weight_decay"], 0.0, math.inf)
    minutes = options["max_minutes"]
    if minutes is not None:
        _check_number("max_minutes", minutes, 0.0, math.inf)
        if minutes == 0:
            raise ValueError("max_minutes must be > 0 (or None: no budget), got 0.")
    if options["family"] not in (None, "auto", *CAUSAL_FAMILIES):
        raise ValueError(
            f"family must be None, 'auto' or one of {CAUSAL_FAMILIES}, got {options['family']!r}."
        )
    if options["dtype"] not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {options['dtype']!r}.")
    if options["instruction"] is not None and not isinstance(options["instruction"], str):
        raise TypeError(f"instruction must be a string or None, got {options['instruction']!r}.")
    lora = options["lora"]
    if lora is None or lora is True:
        return dict(_LORA_DEFAULTS)
    if not isinstance(lora, Mapping):
        raise TypeError(
            f"lora must be None/True (r=8, lora_alpha=16) or a dict of peft.LoraConfig "
            f"arguments, got {lora!r}; causal rerankers are only fine-tuned with LoRA."
        )
    return {**_LORA_DEFAULTS, **lora}


def _load_base(model_dir: str, family: str | None, device: str | None) -> Any:
    """The base's tokenizer and config (weights not yet read), refusing a non-causal family."""
    from ..runtime.loading import load_cross_encoder

    loaded = load_cross_encoder(
        model_dir,
        device=device,
        dtype="float32",
        use_cache=False,
        load_weights=False,
        family=family or "auto",
    )
    if loaded.family not in CAUSAL_FAMILIES:
        raise ValueError(
            f"model_dir={model_dir!r} is a {loaded.family!r} model, not a causal-LM reranker; "
            "fine-tune it with CrossEncoderFinetuneEngine (or pass family='bge-decoder-only' / "
            "'causal-yes-no' for a causal LM read as another family)."
        )
    return loaded


def finetune_causal_reranker(
    groups: Sequence[Any],
    model_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    family: str | None = None,
    lora: bool | Mapping[str, Any] | None = None,
    learning_rate: float = 2e-4,
    epochs: int = 1,
    batch_size: int = 4,
    gradient_accumulation_steps: int = 1,
    max_length: int = 512,
    max_steps: int | None = None,
    seed: int = 0,
    num_negatives: int = 7,
    instruction: str | None = None,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.0,
    max_minutes: float | None = None,
    device: str | None = None,
    dtype: str = "float32",
    logging_steps: int = 1,
    show_progress_bar: bool = False,
) -> CausalFinetuneResult:
    """Fine-tune a causal-LM reranker with LoRA on its own score and save the merged model.

    Args:
        groups: training data in any format of
            :func:`~bge_rerank_plugins.finetune.data.load_training_data` (grouped records with
            ``query``/``positives``/``negatives``, FlagEmbedding JSONL records, pointwise rows,
            LlamaIndex samples, :class:`~bge_rerank_plugins.finetune.data.TrainingGroup`).
        model_dir: the base reranker, a local folder or a Hub id.
        output_dir: folder for the fine-tuned model: new, empty, or written by this library.
        family: ``"bge-decoder-only"`` or ``"causal-yes-no"``; None/"auto": detected as the
            scorer detects it.
        lora: ``peft.LoraConfig`` arguments over the defaults (``r=8``, ``lora_alpha=16``,
            ``lora_dropout=0.05``, the attention and MLP projections); None or True: defaults.
        learning_rate: AdamW learning rate of the adapters (linear decay after warm-up).
        epochs: passes over the groups (``max_steps`` overrides it).
        batch_size: groups per micro-step (each group is ``1 + num_negatives`` sequences).
        gradient_accumulation_steps: micro-steps per optimizer step.
        max_length: tokens per (query, passage) pair before the prompt, the scorer's rule;
            score the result at the same ``max_length``.
        max_steps: stop after this many optimizer steps.
        seed: seeds the adapters' initialisation, the negative draws and the data order.
        num_negatives: negatives per group; a query with fewer borrows passages of others.
        instruction: the prompt (the scorer's ``instruction=``); None: the family's default.
        warmup_ratio: share of the steps with a linear learning-rate warm-up.
        weight_decay: AdamW weight decay of the adapters.
        max_minutes: stop training after this many minutes (the model trained so far is
            saved); None: no budget.
        device: ``"cpu"``, ``"cuda"`` ...; None: the best available.
        dtype: ``"float32"`` or ``"bfloat16"`` (the base weights; bf16 mixed precision).
        logging_steps: log the loss every this many steps.
        show_progress_bar: the trainer's tqdm bar.

    Returns:
        A :class:`CausalFinetuneResult`.

    Raises:
        ValueError: an argument out of range, a base that is not a causal-LM reranker, or data
            without a query that has both a positive and a negative.
        FileExistsError: ``output_dir`` is a non-empty folder this library did not write.
    """
    import torch
    from transformers import TrainingArguments, set_seed

    from ..runtime.causal_family import causal_encoder, causal_token_ids, load_causal_lm
    from ..runtime.families import FAMILIES
    from .causal_export import save_causal_model
    from .causal_training import (
        GroupCollator,
        encode_pairs,
        family_scorer,
        make_trainer,
        wrap_lora,
    )
    from .export import check_output_dir
    from .grouping import build_train_dataset
    from .trainer import TimeBudgetCallback

    lora_options = _check_arguments(
        {
            "family": family,
            "lora": lora,
            "learning_rate": learning_rate,
            "epochs": epochs,
            "batch_size": batch_size,
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "max_length": max_length,
            "max_steps": max_steps,
            "num_negatives": num_negatives,
            "instruction": instruction,
            "warmup_ratio": warmup_ratio,
            "weight_decay": weight_decay,
            "max_minutes": max_minutes,
            "dtype": dtype,
            "logging_steps": logging_steps,
        }
    )
    check_output_dir(output_dir, "output_dir")
    loaded = _load_base(str(model_dir), family, device)
    family = loaded.family
    rng = random.Random(seed)
    dataset = build_train_dataset(
        groups, loss="softmax", num_negatives=num_negatives, rng=rng, what="groups"
    )
    # The scorer's encoder for this family, with the options a scorer would be given.
    options = SimpleNamespace(max_length=max_length, query_max_length=None, instruction=instruction)
    encoder = causal_encoder(family, loaded, options)
    # The stored columns (the redraw transform left out): each group's draw and its pool.
    stored = dataset.with_format(None)
    rows = [
        SimpleNamespace(query=q, docs=d, pool=p)
        for q, d, p in zip(stored["query"], stored["docs"], stored["pool"])
    ]
    ids = encode_pairs(encoder, rows)
    token_ids = causal_token_ids(family, loaded)

    set_seed(seed)
    network = load_causal_lm(loaded, getattr(torch, dtype))
    network.config.use_cache = False
    network = wrap_lora(network, lora_options)
    with tempfile.TemporaryDirectory(prefix="causal-finetune-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            learning_rate=float(learning_rate),
            num_train_epochs=epochs,
            max_steps=max_steps or -1,
            warmup_steps=float(warmup_ratio),
            weight_decay=float(weight_decay),
            logging_steps=logging_steps,
            save_strategy="no",
            report_to="none",
            seed=seed,
            use_cpu=str(loaded.device).startswith("cpu"),
            bf16=dtype == "bfloat16",
            remove_unused_columns=False,
            dataloader_pin_memory=False,
            disable_tqdm=not show_progress_bar,
            optim="adamw_torch",
        )
        collator = GroupCollator(ids, loaded.tokenizer.pad_token_id)
        trainer = make_trainer(
            network, args, dataset, collator, family_scorer(token_ids, FAMILIES[family].score)
        )
        budget = TimeBudgetCallback(None if max_minutes is None else 60.0 * max_minutes)
        trainer.add_callback(budget)
        logger.info(
            "Fine-tuning %s (family %r) on %d groups of up to %d passages for %s.",
            loaded.name,
            family,
            len(dataset),
            num_negatives + 1,
            f"{max_steps} steps" if max_steps else f"{epochs} epoch(s)",
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    history = list(trainer.state.log_history)
    losses = [float(e["loss"]) for e in history if "loss" in e]
    result = CausalFinetuneResult(
        output_path=Path(output_dir),
        family=family,
        global_step=trainer.state.global_step,
        train_seconds=seconds,
        losses=losses,
        log_history=history,
        max_length=max_length,
        instruction=instruction,
        stopped_by_time=budget.stopped,
    )
    # under torchrun every rank holds the same weights: one writer, the others wait for it
    if trainer.is_world_process_zero():
        save_causal_model(trainer.model, loaded, output_dir, result)
    trainer.accelerator.wait_for_everyone()
    return result
