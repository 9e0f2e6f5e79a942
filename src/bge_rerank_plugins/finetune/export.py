"""Atomic, drop-in model directories.

A fine-tuned reranker is written as a plain Hugging Face sequence-classification folder
(``config.json``, ``model.safetensors``, tokenizer files) that loads with no extra arguments in
:class:`~bge_rerank_plugins.CrossEncoderScorer`, ``BGEReranker``, sentence-transformers
``CrossEncoder``, FlagEmbedding ``FlagReranker`` and ``AutoModelForSequenceClassification``.

The folder is written atomically: everything goes to a temporary sibling first; only when that
is complete is the previous model moved aside and the new one renamed into place, after which
the old copy is removed. If the process dies during the write, the previous model is untouched;
in the instant between the two renames it survives as ``.<name>.old-*`` and
:func:`recover_model_dir` (called by every save) puts it back.

Example:
    >>> from bge_rerank_plugins.finetune.export import atomic_model_dir
    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "model"
    >>> with atomic_model_dir(target) as tmp:
    ...     _ = (tmp / "config.json").write_text("{}")
    >>> sorted(p.name for p in target.iterdir())
    ['config.json']
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["atomic_model_dir", "export_model", "recover_model_dir"]


def recover_model_dir(path: str | os.PathLike[str]) -> Path | None:
    """Restore ``path`` from a left-over ``.<name>.old-*`` copy when ``path`` itself is missing.

    Returns the restored path, or None when nothing needed restoring. Stale temporary folders
    (``.<name>.tmp-*``) of an interrupted save are removed.
    """
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        return None
    for stale in parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    olds = sorted(parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    restored = None
    if olds and not target.exists():
        os.replace(olds[-1], target)
        logger.warning("Restored %s from an interrupted save (%s).", target, olds[-1].name)
        restored = target
        olds = olds[:-1]
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
    return restored


@contextlib.contextmanager
def atomic_model_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder; on normal exit it replaces ``path`` (atomic swap).

    On an exception inside the block the temporary folder is deleted and ``path`` keeps the
    previous model.

    Args:
        path: the final model directory.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_model_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if not (tmp / "config.json").is_file():
            raise RuntimeError(f"Refusing to publish {target}: the new model has no config.json.")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_model(
    model: Any,
    tokenizer: Any,
    path: str | os.PathLike[str],
    *,
    max_length: int | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` + ``tokenizer`` as a drop-in directory at ``path``, atomically.

    A PEFT (LoRA) model is merged into its base weights first, so the result is a plain model.

    Args:
        model: a ``transformers`` sequence-classification model (or a PEFT wrapper of one).
        tokenizer: its tokenizer.
        path: destination directory (replaced as a whole when it exists).
        max_length: recorded as the tokenizer's ``model_max_length`` when given.
        extra_files: file name -> text, written next to the model (e.g. a training summary).

    Returns:
        The destination path.
    """
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if max_length is not None:
        tokenizer.model_max_length = int(max_length)
    with atomic_model_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    logger.info("Saved the fine-tuned model to %s", path)
    return Path(path)
