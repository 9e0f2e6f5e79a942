"""The model side of fine-tuning: loading the base model, LoRA and freezing, and checks.

* :func:`load_model`: the base model as a one-logit sentence-transformers ``CrossEncoder``,
  seeded, with :func:`prepare_parameters` applied (LoRA adapters, frozen lower layers);
* :func:`fit_to_data`: the share of the data's tokens the tokenizer cannot represent
  (:func:`check_vocabulary`) and the tokens per pair to train at;
* :func:`first_non_finite` and :func:`check_finite`: no NaN or infinite weight is ever saved.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "check_finite",
    "check_vocabulary",
    "fit_to_data",
    "first_non_finite",
    "load_model",
    "prepare_parameters",
]

logger = logging.getLogger(__name__)


def first_non_finite(model: Any) -> str | None:
    """The name of the first parameter holding a NaN or an infinity, or None."""
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param.detach()).all()):
            return name
    return None


def check_finite(model: Any, path: str | os.PathLike[str]) -> None:
    """Raise ``RerankerError`` before saving ``model`` to ``path`` when a weight is not finite."""
    bad = first_non_finite(model)
    if bad is not None:
        from ..errors import RerankerError

        raise RerankerError(
            f"Refusing to save to {str(path)!r}: parameter {bad!r} holds NaN or infinite "
            "values (a diverged training run); the folder is left as it was."
        )


def load_model(
    model_id: str,
    *,
    device: str,
    seed: int,
    lora: bool | Mapping[str, Any],
    freeze_layers: int,
    from_encoder: bool = False,
) -> Any:
    """The base model as a one-logit ``CrossEncoder``, seeded, with LoRA / freezing applied.

    Args:
        from_encoder: the folder may lack the reranking head (a base encoder or a bi-encoder):
            the head starts at random, on purpose. Without it such a folder is refused.

    Raises:
        ModelNotFoundError: the model cannot be loaded (not local, or offline).
        RandomHeadError: the checkpoint has no head and ``from_encoder`` is False.
        ValueError: the model has more than one output label.
    """
    _check_head(model_id, from_encoder)
    from sentence_transformers.cross_encoder import CrossEncoder
    from transformers import set_seed

    set_seed(seed)
    try:
        model = CrossEncoder(model_id, num_labels=1, device=device)
    except OSError as error:
        from ..errors import ModelNotFoundError

        raise ModelNotFoundError(
            f"Cannot load model_id={model_id!r}: {error}. Give a local model folder or "
            "a Hub id that is in the local cache when offline."
        ) from error
    if getattr(model, "num_labels", 1) != 1:
        raise ValueError(
            f"model_id={model_id!r} has {model.num_labels} output labels; a reranker "
            "needs a single relevance logit (num_labels=1)."
        )
    from .export import remember_modular_model

    remember_modular_model(model)  # a modules.json base: export writes its head modules too
    prepare_parameters(model, lora=lora, freeze_layers=freeze_layers)
    return model


def _check_head(model_id: str, from_encoder: bool) -> None:
    """Refuse (or, with ``from_encoder``, announce) a base whose checkpoint has no head."""
    from pathlib import Path

    folder = Path(model_id)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return  # a Hub id, or sharded weights: transformers' own report covers them
    from transformers import AutoConfig

    from ..errors import RandomHeadError, RerankerError
    from ..runtime.heads import describe_layout, missing_from_checkpoint
    from ..runtime.st_layout import is_st_modular, read_layout

    if is_st_modular(str(folder)):
        try:
            read_layout(str(folder), model_id)
            return  # a modular cross-encoder: its head is in its module folders (modules.json)
        except RerankerError:
            pass  # a bi-encoder or a layout without a score: the check below tells
    config = AutoConfig.from_pretrained(folder)
    config.num_labels = 1
    missing = missing_from_checkpoint(str(weights), config)
    if not missing:
        return
    if from_encoder:
        logger.info(
            "model_id=%r has no reranking head (%s): it starts at random (from_encoder=True).",
            model_id,
            ", ".join(missing),
        )
        return
    raise RandomHeadError(
        f"model_id={model_id!r} has no reranking head ({', '.join(missing)} are not in its "
        f"checkpoint): it looks like {describe_layout(str(folder), config)}. To fine-tune a "
        "reranker from this encoder, pass from_encoder=True: the head then starts at random and "
        "the engine warm-starts it from the encoder's own similarity."
    )


def check_vocabulary(
    tokenizer: Any, rows: Sequence[Any], *, model_id: str, threshold: float
) -> float:
    """Share of the rows' tokens the tokenizer maps to its unknown token; warns above
    ``threshold`` (a model without the data's vocabulary, which fine-tuning cannot fix)."""
    from ..tokenization import unknown_token_rate

    rate = unknown_token_rate(tokenizer, [t for r in rows for t in (r.query, r.passage)])
    if rate > threshold:
        logger.warning(
            "The tokenizer of %s maps %.0f%% of the training tokens to its unknown token: "
            "the model lacks the vocabulary of this data (e.g. an English model on Chinese "
            "text) and fine-tuning cannot fix that. Use a multilingual base such as "
            "BAAI/bge-reranker-v2-m3.",
            model_id,
            100 * rate,
        )
    return rate


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layer", "layers") and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def prepare_parameters(model: Any, *, lora: bool | Mapping[str, Any], freeze_layers: int) -> None:
    """Wrap ``model``'s network in LoRA adapters (``lora``) and freeze its lower layers.

    LoRA trains the adapters plus the head (``modules_to_save``); ``freeze_layers`` freezes the
    embeddings and the lowest N transformer layers.
    """
    hf = model.model
    if lora:
        from peft import LoraConfig, TaskType, get_peft_model

        options: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
        if isinstance(lora, Mapping):
            options.update(lora)
        options.setdefault("modules_to_save", ["classifier", "pooler", "score"])
        config = LoraConfig(task_type=TaskType.SEQ_CLS, **options)
        model[0].model = get_peft_model(hf, config)
        logger.info("LoRA: %s", config)
    if freeze_layers:
        base = getattr(hf, "base_model", hf)
        names = []
        for name, param in base.named_parameters():
            layer = _layer_index(name)
            if "embeddings" in name or (layer is not None and layer < freeze_layers):
                param.requires_grad_(False)
                names.append(name)
        logger.info("Froze %d tensors (embeddings + %d layers).", len(names), freeze_layers)


def fit_to_data(
    model: Any, rows: Sequence[Any], config: Any, *, model_id: str, limit: int
) -> tuple[float, int]:
    """Check ``model``'s vocabulary on the training ``rows`` and set its training length.

    Reads a seeded sample of up to 1,000 rows (the vocabulary check its first 400), and sets
    ``model.max_length`` to :func:`~.recipe.pick_max_length` of ``config.max_length``.

    Returns:
        The unknown-token share (:func:`check_vocabulary`) and the chosen max_length.
    """
    from .recipe import pick_max_length

    sample = random.Random(config.seed).sample(list(rows), min(1000, len(rows)))
    rate = check_vocabulary(
        model.tokenizer, sample[:400], model_id=model_id, threshold=config.unk_warning_threshold
    )
    max_length = pick_max_length(
        config.max_length,
        tokenizer=model.tokenizer,
        pairs=[(r.query, r.passage) for r in sample],
        device=config.device,
        limit=limit,
    )
    model.max_length = max_length
    return rate, max_length
