"""Where the ONNX backend keeps its files, and how it knows they still match the weights.

``<model dir>/onnx`` when it can be written, else a folder under the user's cache. The
``fingerprint.json`` there identifies the weight files the graphs were exported from: by size,
modification time (ns) and inode, and small ones (a head module) by their content too.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["fingerprint", "onnx_cache_dir", "write_stamp"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_HASHED_BYTES = 64 * 2**20  # hashing is ~0.1 s at this size; larger files go by stat only


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True


def onnx_cache_dir(source: str) -> Path:
    """Where the ONNX files of the model at ``source`` are kept.

    ``<model dir>/onnx`` when it can be written, else
    ``~/.cache/bge_rerank_plugins/onnx/<sha1 of the source path>`` (``$XDG_CACHE_HOME`` honoured).
    """
    root = Path(source)
    if root.is_dir() and _writable(root / "onnx"):
        return root / "onnx"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    digest = hashlib.sha1(str(source).encode("utf-8")).hexdigest()[:16]
    folder = base / "bge_rerank_plugins" / "onnx" / digest
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fingerprint(source: str) -> dict[str, Any]:
    """What the export of ``source`` depends on: its weight files, the torch version, the format."""
    import torch

    files = {}
    root = Path(source)
    if root.is_dir():
        # A sentence-transformers modular model keeps its head in module folders (2_Dense/...).
        for path in sorted([*root.iterdir(), *root.glob("[0-9]*_*/*")]):
            if path.is_file() and (path.suffix in _WEIGHT_SUFFIXES or path.name == "config.json"):
                files[path.relative_to(root).as_posix()] = _file_identity(path)
    return {
        "source": str(source),
        "files": files,
        "torch": torch.__version__,
        # 2: exported with the last layer computing the first token only (first_token.py);
        # an older export is still correct but slower, so it is exported again.
        # 3: weights in external .data files (a lower peak while a session loads).
        # 4: int8 settings per int8 file (under "int8", not part of the export's stamp); a
        # format-3 int8 file may have been quantized with full-range weights on a CPU whose
        # kernels saturate them, so it is made again.
        "format": 4,
    }


def _file_identity(path: Path) -> list[Any]:
    # A rewrite within the file system's timestamp granularity can keep size and mtime (a
    # head saved twice in a second), so small files are identified by their content as well.
    stat = path.stat()
    identity: list[Any] = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    if stat.st_size <= _HASHED_BYTES:
        identity.append(hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest())
    return identity


def write_stamp(path: Path, stamp: dict[str, Any], quantized: dict[str, Any]) -> None:
    """Write the fingerprint with the settings of each int8 file (replaced in one step)."""
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(json.dumps({**stamp, "int8": quantized}), encoding="utf-8")
    staged.replace(path)
