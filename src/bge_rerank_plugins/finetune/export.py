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

A base saved by sentence-transformers as modules (``modules.json``: Transformer -> Pooling ->
Dense ...) is written back in that layout, its trained head modules included (see
:func:`remember_modular_model`); the scorer loads it as the ``"st-modular"`` family.

Nothing this library did not write is ever deleted. Each exported folder holds a small marker,
``.bge-rerank-plugins-export.json``, listing the files the export wrote. The destination may be

* missing or empty: the model is written there;
* a model folder written by this library (the marker, or ``config.json`` plus
  ``training_summary.json`` from a version before the marker): the model files are replaced and
  every other file or folder in it (your notes, a README, ...) is carried over into the new
  folder unchanged (hard links, or copies across file systems);
* anything else (a non-empty folder this library did not write, or a file): refused with
  ``FileExistsError`` before anything is written or removed.

Example:
    >>> from bge_rerank_plugins.finetune.export import atomic_model_dir
    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "model"
    >>> with atomic_model_dir(target) as tmp:
    ...     _ = (tmp / "config.json").write_text("{}")
    >>> sorted(p.name for p in target.iterdir())
    ['.bge-rerank-plugins-export.json', 'config.json']
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER",
    "atomic_model_dir",
    "check_output_dir",
    "export_model",
    "push_model_dir",
    "recover_model_dir",
    "remember_modular_model",
]

logger = logging.getLogger(__name__)

#: The file in every exported folder that lists the files this library wrote there.
MARKER = ".bge-rerank-plugins-export.json"

#: The files an export wrote before the marker existed (the folder's model files, recognised
#: by name); only these are replaced in such a folder.
_LEGACY_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "training_summary.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.jinja",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "sentencepiece.bpe.model",
        "spiece.model",
        "tokenizer.model",
    }
)


_SHARD = re.compile(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)")


def _owned_files(target: Path) -> set[str] | None:
    """Names in ``target`` this library wrote, or None when it did not write the folder."""
    marker = target / MARKER
    if marker.is_file():
        try:
            files = json.loads(marker.read_text(encoding="utf-8"))["files"]
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise TypeError("'files' is not a list of names")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise FileExistsError(
                f"{target}: the export marker {MARKER} cannot be read ({error}); so which files "
                "are the model's is unknown. Delete the marker (or the folder) yourself, or "
                "choose another folder."
            ) from None
        return {*files, MARKER}
    if (target / "config.json").is_file() and (target / "training_summary.json").is_file():
        names = {p.name for p in target.iterdir()}
        return {n for n in names if n in _LEGACY_FILES or _SHARD.fullmatch(n)}
    return None


def check_output_dir(path: str | os.PathLike[str], what: str = "path") -> None:
    """Raise ``FileExistsError`` when a model may not be written to ``path``.

    A missing or empty folder, or a model folder this library wrote, is fine (see the module
    docstring); anything else is refused, so nothing of yours is ever deleted.

    Args:
        path: the destination folder.
        what: the argument's name, for the message (e.g. ``"model_output_path"``).
    """
    target = Path(path)
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise FileExistsError(
            f"{what}={str(target)!r} is a file, not a folder: choose a folder path for the model."
        )
    if not any(target.iterdir()) or _owned_files(target) is not None:
        return
    sample = sorted(p.name for p in target.iterdir())[:5]
    raise FileExistsError(
        f"{what}={str(target)!r} is a non-empty folder that bge-rerank-plugins did not write "
        f"(it holds {sample}); writing the model there would replace the folder. Choose a new "
        "or empty folder (or a model folder written by this library, whose other files are "
        "kept); nothing was written or removed."
    )


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_over(target: Path, tmp: Path, owned: set[str]) -> list[str]:
    """Copy (hard-link) every entry of ``target`` not in ``owned`` into ``tmp``."""
    kept = sorted(p.name for p in target.iterdir() if p.name not in owned)
    clash = [name for name in kept if (tmp / name).exists() or (tmp / name).is_symlink()]
    if clash:
        raise FileExistsError(
            f"{target} holds {clash}, which bge-rerank-plugins did not write but the new model "
            "writes too; move them out of the folder (nothing was written or removed)."
        )
    for name in kept:
        src, dst = target / name, tmp / name
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_dir():
            shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(src), str(dst))
    return kept


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
    previous model. The files written in the block are listed in the folder's marker
    (:data:`MARKER`); entries of a previous folder that this library did not write are carried
    over into the new one.

    Args:
        path: the final model directory.

    Raises:
        FileExistsError: ``path`` is a file or a non-empty folder this library did not write
            (see :func:`check_output_dir`); nothing is written or removed.
        RuntimeError: the block wrote no ``config.json``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_model_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if not (tmp / "config.json").is_file():
            raise RuntimeError(f"Refusing to publish {target}: the new model has no config.json.")
        check_output_dir(target)
        written = sorted(p.name for p in tmp.iterdir() if p.name != MARKER)
        (tmp / MARKER).write_text(
            json.dumps({"written_by": "bge-rerank-plugins", "files": written}, indent=1) + "\n",
            encoding="utf-8",
        )
        if target.is_dir() and any(target.iterdir()):
            kept = _carry_over(target, tmp, _owned_files(target) or set())
            if kept:
                logger.info("Kept %s's entries not written by this library: %s", target, kept)
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


#: The attribute of a modular cross-encoder's body that points back at the whole model.
_MODULAR_OWNER = "_bge_rerank_modular_owner"


def remember_modular_model(model: Any) -> None:
    """Let :func:`export_model` find the whole sentence-transformers ``CrossEncoder`` ``model``
    from its ``transformers`` body, when the model has modules after the body (a head of its
    own that the body's ``save_pretrained`` would leave out)."""
    if len(model) > 1:
        import weakref

        model[0].model.__dict__[_MODULAR_OWNER] = weakref.ref(model)


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
        path: destination directory: missing, empty, or a model folder this library wrote (its
            model files are replaced, its other files kept); anything else raises
            ``FileExistsError``.
        max_length: recorded as the tokenizer's ``model_max_length`` when given.
        extra_files: file name -> text, written next to the model (e.g. a training summary).

    Returns:
        The destination path.
    """
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    owner = getattr(model, _MODULAR_OWNER, lambda: None)()
    if max_length is not None:
        tokenizer.model_max_length = int(max_length)
    with atomic_model_dir(path) as tmp:
        if owner is not None:  # the modules.json layout, the trained head modules with it
            owner[0].model = model
            owner.save(str(tmp), create_model_card=False, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    logger.info("Saved the fine-tuned model to %s", path)
    return Path(path)


def push_model_dir(path: str | os.PathLike[str], repo_id: str) -> str:
    """Upload the model folder ``path`` to the Hub repository ``repo_id``; returns its URL.

    Raises:
        RuntimeError: no model in ``path``, offline (``HF_HUB_OFFLINE``), or the upload failed.
    """
    from ..runtime.loading import hub_offline

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise RuntimeError(f"No fine-tuned model in {folder}: call finetune() first.")
    if hub_offline():
        raise RuntimeError(
            "Cannot push to the Hub: HF_HUB_OFFLINE is set. Unset it, log in with "
            "`hf auth login`, then call push_to_hub again (or upload the folder "
            f"{folder} yourself)."
        )
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder))
    except Exception as error:
        raise RuntimeError(f"push_to_hub({repo_id!r}) failed: {error}") from error
    return f"https://huggingface.co/{repo_id}"
