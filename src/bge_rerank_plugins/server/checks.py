"""Checks of request content the schemas cannot express: text the server could not tokenize or
echo back intact is refused with a 422 naming the field.

>>> check_value({"text": "fine", "tags": ["a", 1.5]}, "documents[0]")
>>> check_value("bad \\ud800", "query")
Traceback (most recent call last):
...
bge_rerank_plugins.server.errors.ApiError: query contains a lone UTF-16 surrogate ...
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import ApiError, ErrorKind

__all__ = ["MAX_DOCUMENT_DEPTH", "check_value"]

#: Deepest nesting of lists and objects accepted inside one Cohere object document (deeper -> 422;
#: returned documents are echoed back, and JSON serializers give up a few hundred levels down).
MAX_DOCUMENT_DEPTH = 64

# A lone UTF-16 surrogate: JSON's "\ud800" escape decodes to one, and it cannot be encoded as
# UTF-8, so neither the tokenizer nor the response encoder can take it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_value(value: Any, field: str, depth: int = 0) -> None:
    """Refuse what the server could not tokenize or echo back intact, naming the field.

    Lone surrogates (no UTF-8 form), NaN and Infinity (JSON has no such numbers; they would come
    back as ``null``) and nesting deeper than :data:`MAX_DOCUMENT_DEPTH`.

    Raises:
        ApiError: of kind ``invalid`` (422), with ``field`` set to where the value is.
    """
    if isinstance(value, str):
        match = _SURROGATE.search(value)
        if match:
            raise ApiError(
                ErrorKind.INVALID,
                f"{field} contains a lone UTF-16 surrogate (\\u{ord(match.group()):04x} at "
                f"character {match.start()}), which is not text and has no UTF-8 form; send "
                "valid Unicode (a surrogate pair such as \\ud83d\\ude00 is fine).",
                field=field,
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError(
                ErrorKind.INVALID,
                f"{field} is {value!r}; JSON has no NaN or Infinity and it could not be returned "
                "as sent. Send a number, null or a string.",
                field=field,
            )
    elif isinstance(value, (dict, list)):
        if depth >= MAX_DOCUMENT_DEPTH:
            raise ApiError(
                ErrorKind.INVALID,
                f"{field} is nested more than {MAX_DOCUMENT_DEPTH} levels deep (lists and "
                "objects inside a document); flatten it.",
                field=field,
            )
        if isinstance(value, dict):
            for key, item in value.items():
                check_value(key, f"{field} (a key)", depth + 1)
                check_value(item, f"{field}.{key}", depth + 1)
        else:
            for i, item in enumerate(value):
                check_value(item, f"{field}[{i}]", depth + 1)
