"""Reading UTF-8 text and JSON-lines files, with errors that name the file and the line.

The low-level readers under every data format of the package (BEIR folders, training data).
A UTF-8 byte-order mark at the start of a file is accepted (Windows tools often write one); a
file in another encoding (latin-1, cp1252) is an error naming the line, the byte and the fix.
These functions used to live in :mod:`bge_rerank_plugins.beir`, which still re-exports them.

>>> decode_utf8(b"\\xef\\xbb\\xbfcaf\\xc3\\xa9", "notes.txt")  # the byte-order mark is dropped
'caf\u00e9'
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["PathLike", "decode_utf8", "iter_jsonl", "iter_lines", "require_field"]

#: A file path: a string or a path object.
PathLike = str | os.PathLike[str]


def decode_utf8(data: bytes, path: PathLike) -> str:
    """``data`` (a whole file) as text: UTF-8, a leading byte-order mark dropped.

    Raises:
        ValueError: the bytes are not UTF-8 (e.g. latin-1 or cp1252); names the file, the
            1-based line and the offending byte, and says how to convert the file.
    """
    start = 3 if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = start + error.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        raise ValueError(_not_utf8(path, line, column, data[offset])) from None


def _not_utf8(path: PathLike, line: int, column: int, byte: int) -> str:
    return (
        f"{path}:{line}: not valid UTF-8 (byte 0x{byte:02x} at column {column}); the file is "
        "probably latin-1 or cp1252: convert it to UTF-8, e.g. "
        f"`iconv -f latin1 -t utf-8 {Path(path).name} > fixed.jsonl`"
    )


def iter_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of a UTF-8 text file (line end removed).

    A UTF-8 byte-order mark at the start is dropped (files saved by Windows tools often have
    one).

    Raises:
        ValueError: a line is not valid UTF-8 (names the file, the line and the byte).
    """
    path = Path(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    _not_utf8(path, number, error.start + 1, raw[error.start])
                ) from None
            yield number, text.rstrip("\r\n")


def iter_jsonl(path: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file.

    The file is UTF-8 (a leading byte-order mark is accepted).

    Raises:
        ValueError: a line is not valid UTF-8, not valid JSON or not a JSON object (names file
            and line).
    """
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: invalid JSON ({error.msg})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
        yield number, value


def require_field(
    row: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str
) -> Any:
    """``row[name]``, checked to be of type ``kind``; the error starts with ``where``.

    ``where`` is the ``file:line`` of the row. A bool never counts as an int.

    Raises:
        ValueError: the field is missing or of another type.

    >>> require_field({"text": 3}, "text", str, "corpus.jsonl:7")
    Traceback (most recent call last):
    ...
    ValueError: corpus.jsonl:7: field 'text' must be str, got int 3
    """
    if name not in row:
        raise ValueError(f"{where}: missing field {name!r}")
    value = row[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise ValueError(
            f"{where}: field {name!r} must be {expected}, got {type(value).__name__} {value!r:.60}"
        )
    return value
