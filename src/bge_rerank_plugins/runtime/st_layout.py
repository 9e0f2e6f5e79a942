"""Read a sentence-transformers modular cross-encoder's layout (``modules.json``), no weights.

sentence-transformers (v5.4 and later, v6) saves a cross-encoder either as one
``*ForSequenceClassification`` model (``modules.json`` lists a single ``Transformer`` whose
``sentence_bert_config.json`` says ``"transformer_task": "sequence-classification"``: our
``"sequence-classification"`` family) or as modules run in order, each in its own folder with a
``config.json`` and, if it has parameters, a ``model.safetensors``::

    Transformer (the root folder: an AutoModel body and its tokenizer)
      -> Pooling(cls | mean | max | ...)  1_Pooling/config.json
      -> Dense(in -> out, activation)     2_Dense/{config.json, model.safetensors}
      [-> LayerNorm -> Dense(... -> 1)]   (the Ettin rerankers)

Each module reads and writes named entries of one features dict (``token_embeddings``,
``sentence_embedding``, ``scores``); the score is ``scores``. This module turns that layout into
:class:`Stage` records for :mod:`.st_modular` and refuses, naming the module, anything it cannot
run exactly: an unknown or custom module type, a missing weights file, prompts, lowercasing.

>>> is_st_modular("/nowhere")
False
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelFilesError, RandomHeadError, RerankerError

__all__ = [
    "POOLING_MODES",
    "Stage",
    "StLayout",
    "check_st_modular_files",
    "is_st_modular",
    "model_file",
    "read_layout",
]

logger = logging.getLogger(__name__)

#: The pooling modes of sentence-transformers' ``Pooling`` module, all of them supported.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
#: Module types (the class name ending ``modules.json``'s ``type``) and whether they have weights.
_TYPES = {"Pooling": False, "Dense": True, "LayerNorm": True, "Normalize": False, "Dropout": False}
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def model_file(source: str, relative: str, revision: str | None = None) -> Path | None:
    """The file ``relative`` of the model at ``source`` (a folder or a Hub id), or ``None``.

    For a Hub id the file comes from the Hub cache or the Hub (``HF_HUB_OFFLINE`` honoured).
    """
    folder = Path(source)
    if folder.is_dir():
        path = folder / relative
        return path if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, relative, revision=revision))
    except Exception:  # not on the Hub, not cached offline, not a repo id: nothing to read
        return None


def _json(source: str, relative: str, revision: str | None, name: str) -> Any:
    path = model_file(source, relative, revision)
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelFilesError(
            f"model={name!r}: {relative} in {source} cannot be read as JSON ({error}); copy it "
            "again from where the model came from."
        ) from error


def _transformer_task(source: str, revision: str | None, name: str) -> str:
    config = _json(source, "sentence_bert_config.json", revision, name) or {}
    return str(config.get("transformer_task", "feature-extraction"))


def is_st_modular(source: str, revision: str | None = None) -> bool:
    """Whether ``source`` is a modular cross-encoder: a ``modules.json`` that lists more than a
    sequence-classification or causal-LM ``Transformer`` (those load as their own families)."""
    try:
        modules = _json(source, "modules.json", revision, source)
    except ModelFilesError:
        return True  # a broken modules.json: the st-modular loader names the file
    if not isinstance(modules, list) or not modules:
        return False
    task = _transformer_task(source, revision, source)
    return task not in ("sequence-classification", "text-generation", "any-to-any")


@dataclass(frozen=True)
class Stage:
    """One module after the ``Transformer``: its type, folder, saved config and weights file."""

    kind: str
    path: str
    config: dict[str, Any]
    weights: Path | None = None


@dataclass(frozen=True)
class StLayout:
    """A modular cross-encoder: the body's ``sentence_bert_config.json`` and the later modules."""

    transformer: dict[str, Any]
    stages: tuple[Stage, ...]
    activation_fn: str | None = None
    max_seq_length: int | None = None


def _refuse(name: str, source: str, what: str) -> RerankerError:
    return RerankerError(
        f"model={name!r}: {source} is a sentence-transformers modular cross-encoder, but {what}. "
        "Score it with sentence_transformers.CrossEncoder, or save it as one "
        "*ForSequenceClassification model."
    )


def _pooling_config(config: dict[str, Any], label: str, name: str, source: str) -> dict[str, Any]:
    config = dict(config)
    if "word_embedding_dimension" in config:
        config.setdefault("embedding_dimension", config.pop("word_embedding_dimension"))
    legacy = [mode for key, mode in _LEGACY_POOLING.items() if config.pop(key, False)]
    mode = config.get("pooling_mode", legacy or "mean")
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown or not modes:
        raise _refuse(
            name,
            source,
            f"its {label} uses pooling mode(s) {unknown or modes!r}, which this "
            f"scorer does not implement (it implements {', '.join(POOLING_MODES)})",
        )
    config["pooling_mode"] = modes
    return config


def _stage(entry: Any, source: str, revision: str | None, name: str) -> Stage:
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise ModelFilesError(
            f"model={name!r}: modules.json in {source} has an entry without a 'type' ({entry!r})."
        )
    class_ref, path = entry["type"], str(entry.get("path", ""))
    kind = class_ref.rsplit(".", 1)[-1]
    label = f"module {path or '(root)'} ({class_ref})"
    if kind == "LogitScore":
        raise _refuse(
            name,
            source,
            f"its {label} reads a causal LM's yes/no logits; pass the causal "
            "family for this model (family=..., see docs/families.md)",
        )
    if kind not in _TYPES or not class_ref.startswith("sentence_transformers."):
        raise _refuse(name, source, f"its {label} is a module type this scorer does not know")
    config = _json(source, f"{path}/config.json", revision, name)
    if not isinstance(config, dict):
        raise ModelFilesError(
            f"model={name!r}: {label} in {source} has no config.json; copy the {path} folder "
            "again from where the model came from."
        )
    weights = None
    if _TYPES[kind]:
        for file_name in _WEIGHT_FILES:
            weights = model_file(source, f"{path}/{file_name}", revision)
            if weights is not None:
                break
        else:
            raise RandomHeadError(
                f"model={name!r}: {label} in {source} has no weights file "
                f"({' or '.join(_WEIGHT_FILES)}); loading it would initialise that module at "
                "random, so every score would be noise. "
                f"Copy the {path} folder again from where the model came from."
            )
    if kind == "Pooling":
        config = _pooling_config(config, label, name, source)
    return Stage(kind=kind, path=path, config=config, weights=weights)


def read_layout(source: str, name: str, revision: str | None = None) -> StLayout:
    """The layout of the modular cross-encoder at ``source``; raises naming what it cannot run."""
    modules = _json(source, "modules.json", revision, name)
    if not isinstance(modules, list) or not modules:
        raise RerankerError(
            f"model={name!r}: family='st-modular' needs a sentence-transformers modules.json in "
            f"{source}, and there is none (or it lists no module). Pass family='auto'."
        )
    first = modules[0]
    if not (isinstance(first, dict) and str(first.get("type", "")).endswith(".Transformer")):
        raise _refuse(name, source, f"its first module is {first!r}, not a Transformer")
    if str(first.get("path", "")) not in ("", "."):
        raise _refuse(name, source, "its Transformer is in a subfolder, not in the model folder")
    transformer = _json(source, "sentence_bert_config.json", revision, name) or {}
    task = transformer.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise _refuse(name, source, f"its Transformer's task is {task!r}: pass family='auto'")
    output = transformer.get("modality_config", {}).get("text", {}).get("method_output_name")
    if output not in (None, "last_hidden_state"):
        raise _refuse(name, source, f"its Transformer outputs {output!r}, not last_hidden_state")
    if transformer.get("do_lower_case"):
        raise _refuse(name, source, "its Transformer lowercases the input (do_lower_case)")
    if transformer.get("processing_kwargs"):
        raise _refuse(name, source, "its Transformer sets processing_kwargs")
    model_config = _json(source, "config_sentence_transformers.json", revision, name) or {}
    model_type = model_config.get("model_type", "CrossEncoder")
    if model_type != "CrossEncoder":
        raise RandomHeadError(
            f"model={name!r}: {source} is a sentence-transformers {model_type} (a bi-encoder or "
            "embedding model), not a cross-encoder: it has no relevance head. Fine-tune a "
            "cross-encoder from it first (CrossEncoderFinetuneEngine)."
        )
    if model_config.get("default_prompt_name") or any((model_config.get("prompts") or {}).values()):
        raise _refuse(name, source, "it prepends prompts (config_sentence_transformers.json)")
    stages = tuple(_stage(entry, source, revision, name) for entry in modules[1:])
    writes = [s.config.get("module_output_name") for s in stages if s.kind == "Dense"]
    if "scores" not in writes:
        raise RandomHeadError(
            f"model={name!r}: no module of {source} writes a score (no Dense module with "
            "module_output_name 'scores'; its modules are "
            f"{', '.join(s.kind for s in stages) or 'a Transformer only'}), so it is an "
            "embedding model, not a cross-encoder. Fine-tune a cross-encoder from it first "
            "(CrossEncoderFinetuneEngine)."
        )
    limit = transformer.get("max_seq_length")
    return StLayout(
        transformer=transformer,
        stages=stages,
        activation_fn=model_config.get("activation_fn"),
        max_seq_length=int(limit) if isinstance(limit, int) and limit > 0 else None,
    )


def check_st_modular_files(
    source: str, name: str, tokenizer: Any, revision: str | None = None
) -> None:
    """Refuse a layout the scorer cannot run before any weight is read; apply the
    ``max_seq_length`` of ``sentence_bert_config.json`` to ``tokenizer`` as sentence-transformers
    does."""
    layout = read_layout(source, name, revision)
    if layout.max_seq_length is not None and tokenizer is not None:
        tokenizer.model_max_length = layout.max_seq_length
