"""Saving a LoRA-fine-tuned causal-LM reranker as a plain model folder of its base's layout.

:func:`save_causal_model` merges the adapters into the weights (``merge_and_unload``) and writes,
atomically (:func:`~bge_rerank_plugins.finetune.export.atomic_model_dir`):

* the causal LM (``config.json``, ``model.safetensors``, ``generation_config.json``) and the
  tokenizer (its chat template included): what ``FlagLLMReranker`` and ``transformers`` load;
* the base's sentence-transformers files when it has them (``modules.json``, its module folders
  such as ``1_LogitScore/``, ``config_sentence_transformers.json``,
  ``sentence_bert_config.json``): the scorer reads the yes/no token ids there, and
  sentence-transformers loads the folder as the same CrossEncoder;
* ``training_summary.json``: base, family, steps, losses, max_length, instruction.

The folder is then detected as the scorer would detect it; a family other than the trained one
(e.g. a BGE-layout model on a Qwen base, which ``family="auto"`` reads as yes/no) is logged as a
warning naming the ``family=`` to pass.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["save_causal_model"]

logger = logging.getLogger(__name__)

#: The sentence-transformers files at a model's top level that describe its layout.
_ST_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


def _copy_st_layout(source: str, revision: str | None, tmp: Path) -> list[str]:
    """Copy the base's sentence-transformers layout files into ``tmp``; the names copied."""
    from ..runtime.st_layout import model_file

    copied = []
    for name in _ST_FILES:
        path = model_file(source, name, revision)
        if path is not None:
            shutil.copyfile(path, tmp / name)
            copied.append(name)
    if "modules.json" not in copied:
        return copied
    modules = json.loads((tmp / "modules.json").read_text(encoding="utf-8"))
    for module in modules if isinstance(modules, list) else ():
        folder = str(module.get("path", "") or "") if isinstance(module, dict) else ""
        if not folder:
            continue  # the Transformer module: the model files at the top level
        local = Path(source) / folder
        if local.is_dir():
            shutil.copytree(local, tmp / folder)
        else:  # a Hub model: its module's config is what the layout needs
            path = model_file(source, f"{folder}/config.json", revision)
            if path is not None:
                (tmp / folder).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, tmp / folder / "config.json")
        copied.append(f"{folder}/")
    return copied


def _detected_family(path: Path) -> str:
    from transformers import AutoConfig

    from ..runtime.families import detect_family

    return detect_family(str(path.resolve()), AutoConfig.from_pretrained(path))


def save_causal_model(
    model: Any, loaded: Any, output_dir: str | os.PathLike[str], result: Any
) -> Path:
    """Merge ``model``'s LoRA adapters and write the folder (see the module docstring).

    Args:
        model: the trained network (a ``peft`` model, or a plain causal LM).
        loaded: the base's :class:`~bge_rerank_plugins.runtime.loading.LoadedModel` (tokenizer,
            source, revision).
        output_dir: the destination (missing, empty, or written by this library).
        result: the :class:`~.causal.CausalFinetuneResult` summarised in the folder.

    Raises:
        RerankerError: a merged weight is NaN or infinite (nothing is written).
    """
    from .export import atomic_model_dir
    from .modeling import check_finite

    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    check_finite(merged, output_dir)
    merged.config.use_cache = True  # switched off for training only
    summary = {
        "base_model": loaded.name,
        "family": result.family,
        "objective": "grouped softmax cross-entropy (positive first), LoRA merged",
        "global_step": result.global_step,
        "train_seconds": round(result.train_seconds, 1),
        "losses": result.losses,
        "max_length": result.max_length,
        "instruction": result.instruction,
    }
    revision = loaded.load_options.get("revision")
    with atomic_model_dir(output_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        layout = _copy_st_layout(loaded.source, revision, tmp)
        (tmp / "training_summary.json").write_text(json.dumps(summary, indent=2), "utf-8")
    if layout:
        logger.info("Kept the base's sentence-transformers layout: %s", ", ".join(layout))
    target = Path(output_dir)
    detected = _detected_family(target)
    if detected != result.family:
        logger.warning(
            "%s was trained as family=%r but family='auto' reads it as %r: score it with "
            "CrossEncoderScorer(%r, family=%r).",
            target,
            result.family,
            detected,
            str(target),
            result.family,
        )
    logger.info("Saved the fine-tuned %s reranker to %s", result.family, target)
    return target
