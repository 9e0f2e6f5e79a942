"""Turning passages (plain strings or records with several fields) into the text that is scored.

A *record* is a ``dict``, or an object such as a LlamaIndex node or a LangChain ``Document``
that carries its text plus a ``metadata`` mapping. A :class:`PassageTemplate` says which fields
make up the passage text and how they are joined.

>>> t = PassageTemplate("{title}\\n{abstract}\\n{text}")
>>> t.render({"title": "BM25", "text": "A ranking function."})
'BM25\\nA ranking function.'
>>> PassageTemplate(["title", "text"], separator=" | ").render({"title": "T", "text": "body"})
'T | body'
"""

from __future__ import annotations

import logging
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

__all__ = [
    "DEFAULT_FIELDS",
    "PassageTemplate",
    "as_passages",
    "as_template",
    "check_query",
    "best_first",
    "get_field",
    "pair_texts",
    "passage_texts",
    "passage_to_text",
]

logger = logging.getLogger(__name__)

#: Fields used for a record when no template is given.
DEFAULT_FIELDS: tuple[str, ...] = ("title", "text")

# Attribute names under which the common frameworks keep a record's main text.
_TEXT_ATTRIBUTES = ("text", "page_content", "content")


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def get_field(record: Any, name: str) -> Any:
    """Look up ``name`` in a record: a mapping key, then an attribute, then ``record.metadata``.

    The field ``text`` also resolves to a LangChain ``Document``'s ``page_content``.
    Returns ``None`` when the record has no such field.
    """
    if isinstance(record, Mapping):
        if name in record:
            return record[name]
        metadata = record.get("metadata")
        if isinstance(metadata, Mapping) and name in metadata:
            return metadata[name]
        return None
    candidates = _TEXT_ATTRIBUTES if name == "text" else (name,)
    for attribute in candidates:
        value = getattr(record, attribute, None)
        if value is not None and not callable(value):
            return value
    metadata = getattr(record, "metadata", None)
    if isinstance(metadata, Mapping):
        return metadata.get(name)
    return None


@dataclass(frozen=True)
class PassageTemplate:
    """How a record's fields become one passage text.

    Args:
        template: either a format string such as ``"{title}\\n{text}"`` or a sequence of field
            names joined with ``separator``.
        separator: joins the fields when ``template`` is a sequence of names.

    A field that is missing, ``None`` or blank is skipped cleanly: it never renders as
    ``"None"`` and leaves no dangling separator. The literal text between two fields is split at
    its last newline: what comes before (the separator) is written only between two fields that
    are both present; what comes after (a label such as ``"Body: "``) belongs to the next field
    and is dropped with it. Text without a newline between two fields counts as a separator.

    >>> PassageTemplate("Title: {title}\\nBody: {text}").render({"text": "only a body"})
    'Body: only a body'
    >>> PassageTemplate("{title}: {text}").render({"text": "no title"})
    'no title'
    """

    template: str | Sequence[str] = DEFAULT_FIELDS
    separator: str = "\n"
    _parts: tuple[tuple[str, str, str], ...] = field(init=False, repr=False, compare=False)
    _tail: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.template, str):
            parts: list[tuple[str, str, str]] = []
            tail = ""
            for literal, name, spec, conversion in string.Formatter().parse(self.template):
                if spec or conversion:
                    raise ValueError(
                        f"template: format specs and conversions are not supported "
                        f"(found in {{{name}}}); use plain fields such as '{{title}}'."
                    )
                if name is None:
                    tail = literal
                elif not name:
                    raise ValueError(
                        "template: positional fields '{}' are not allowed; name each field, "
                        "for example '{title}\\n{text}'."
                    )
                elif not parts:
                    parts.append(("", literal, name))
                else:
                    cut = literal.rfind("\n") + 1
                    separator, label = (literal[:cut], literal[cut:]) if cut else (literal, "")
                    parts.append((separator, label, name))
            if not parts:
                raise ValueError(
                    f"template: {self.template!r} names no field; use e.g. '{{title}}\\n{{text}}'."
                )
        else:
            names = list(self.template)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(
                    "template: a sequence template must be a non-empty list of field names, "
                    "for example ['title', 'text']."
                )
            parts = [("" if i == 0 else self.separator, "", n) for i, n in enumerate(names)]
            tail = ""
        object.__setattr__(self, "_parts", tuple(parts))
        object.__setattr__(self, "_tail", tail)

    @property
    def fields(self) -> tuple[str, ...]:
        """The field names the template reads, in order."""
        return tuple(name for _, _, name in self._parts)

    def present_fields(self, record: Any) -> tuple[str, ...]:
        """The template's fields that ``record`` has (not missing and not ``None``).

        A record with none of them renders as ``""``: usually a template naming the wrong
        fields, which :func:`passage_to_text` and the adapters refuse rather than score.
        """
        return tuple(name for name in self.fields if get_field(record, name) is not None)

    def render(self, record: Any) -> str:
        """Render ``record`` to text; missing fields are skipped cleanly."""
        pieces: list[str] = []
        for separator, label, name in self._parts:
            value = get_field(record, name)
            if _is_blank(value):
                continue
            pieces.append((separator if pieces else "") + label + str(value))
        if not pieces:
            return ""
        last_present = not _is_blank(get_field(record, self._parts[-1][2]))
        return "".join(pieces) + (self._tail if last_present else "")


_DEFAULT_TEMPLATE = PassageTemplate()

TemplateSpec = str | Sequence[str] | PassageTemplate


@overload
def as_template(template: TemplateSpec | None, default: TemplateSpec = ...) -> PassageTemplate: ...
@overload
def as_template(template: TemplateSpec | None, default: None) -> PassageTemplate | None: ...
def as_template(
    template: TemplateSpec | None, default: TemplateSpec | None = DEFAULT_FIELDS
) -> PassageTemplate | None:
    """``template`` as a :class:`PassageTemplate`; ``None`` gives ``default`` (title + text).

    The one place that turns what users pass as ``template=`` (a format string, a list of field
    names, a ``PassageTemplate`` or ``None``) into a template. ``default=None`` keeps ``None``
    for "no template" (the scorer's convention: strings pass through, records use title and
    text). A list of field names is stored as a tuple, so the template can be hashed.

    >>> as_template(None).fields
    ('title', 'text')
    >>> as_template("{title}: {text}").render({"title": "T", "text": "body"})
    'T: body'
    >>> t = PassageTemplate(["text"]); as_template(t) is t
    True
    >>> as_template(None, default=None) is None
    True
    >>> as_template(3)
    Traceback (most recent call last):
    ...
    TypeError: template must be a format string, a list of field names or a PassageTemplate, got int

    Raises:
        TypeError: ``template`` is of another type.
        ValueError: the string or list names no field (see :class:`PassageTemplate`).
    """
    if template is None:
        if default is None:
            return None
        template = default
    if isinstance(template, PassageTemplate):
        return template
    if isinstance(template, str):
        return PassageTemplate(template)
    if isinstance(template, Sequence):
        return PassageTemplate(tuple(template))  # a tuple, so the template can be hashed
    raise TypeError(
        f"template must be a format string, a list of field names or a PassageTemplate, "
        f"got {type(template).__name__}"
    )


def best_first(scores: Sequence[float]) -> list[int]:
    """Indices of ``scores`` from the highest score to the lowest; equal scores keep input order.

    The one definition of "best first with stable ties" used for every ranking, so that a
    constant scorer leaves any input order unchanged.

    >>> best_first([0.2, 0.9, 0.2, 0.5])
    [1, 3, 0, 2]
    >>> best_first([])
    []
    """
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def passage_to_text(passage: Any, template: PassageTemplate | None, index: int) -> str:
    """The text of one passage; ``index`` is its position, named in errors.

    Strings pass through unchanged unless a template is given (a template applies to records
    only). Records render with ``template`` or, without one, their title and text.

    Raises:
        TypeError: ``passage`` is neither a string nor a record.
        ValueError: no data would be scored: without a template, the record has no ``text``
            field; with one, the record has none of the template's fields (absent or ``None``).
            A field that is present but blank is not an error: the caller counts such records.
    """
    if isinstance(passage, str):
        return passage
    if passage is None:
        raise TypeError(
            f"passages[{index}] is None; every passage must be a string or a record "
            "(a dict, or an object with text and metadata). Drop empty results before scoring."
        )
    if isinstance(passage, (bytes, int, float, bool)) or not (
        isinstance(passage, Mapping)
        or hasattr(passage, "metadata")
        or any(hasattr(passage, a) for a in _TEXT_ATTRIBUTES)
    ):
        raise TypeError(
            f"passages[{index}] has type {type(passage).__name__}; expected a string or a record "
            "(a dict, or an object with text and metadata such as a LlamaIndex node or a "
            "LangChain Document)."
        )
    active = template or _DEFAULT_TEMPLATE
    if template is None:
        if get_field(passage, "text") is None:
            raise ValueError(
                f"passages[{index}] is a record without a 'text' field ({_describe(passage)}); "
                "without a template a record is scored as its title and text, so its text "
                "would be lost. Pass template= naming the field that holds it, e.g. "
                "template='{title}\\n{body}'."
            )
    elif not active.present_fields(passage):
        raise ValueError(
            f"passages[{index}] has none of the template's fields "
            f"{', '.join(active.fields)} ({_describe(passage)}), so it would be scored as empty "
            "text. Fix the field names in template=, or drop such records before scoring."
        )
    return active.render(passage)


def as_passages(passages: Any, name: str = "passages") -> Sequence[Any]:
    """``passages`` as a sequence, read once; a clear TypeError for what is not a collection.

    A list or tuple is used as is (never copied or modified); any other iterable, such as a
    generator, is read into a list once. A single string, a single record (a dict, a LangChain
    ``Document``, a LlamaIndex node) or ``None`` is refused: iterating it would score its
    characters, its keys or nothing.
    """
    if isinstance(passages, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of passages, got a single {type(passages).__name__}; "
            "wrap it in a list."
        )
    if passages is None:
        raise TypeError(f"{name} must be a list of passages (strings or records), got None.")
    if isinstance(passages, Mapping) or hasattr(passages, "metadata"):
        raise TypeError(
            f"{name} must be a list of passages, got a single record "
            f"({type(passages).__name__}); wrap it in a list."
        )
    if isinstance(passages, Sequence):
        return passages
    if isinstance(passages, Iterable):
        return list(passages)
    raise TypeError(
        f"{name} must be a list (or other iterable) of passages: strings or records such as "
        f"dicts, LangChain Documents or LlamaIndex nodes; got {type(passages).__name__}."
    )


def passage_texts(
    passages: Any, template: PassageTemplate | None, prefix: str = "passages"
) -> list[str]:
    """The text of each passage (:func:`passage_to_text`); errors name ``prefix[index]``.

    A record with no data to score (no ``text`` field, or none of the template's fields) is
    a ValueError; records whose fields are present but blank are scored as empty text and
    counted in one warning.
    """
    texts = []
    blank = 0
    for i, passage in enumerate(as_passages(passages, prefix)):
        try:
            text = passage_to_text(passage, template, i)
        except (TypeError, ValueError) as error:
            if prefix != "passages":
                raise type(error)(str(error).replace("passages[", f"{prefix}[", 1)) from None
            raise
        if not isinstance(passage, str) and not text.strip():
            blank += 1
        texts.append(text)
    if blank:
        logger.warning(
            "%d of %d %s are records whose fields are all blank; they are scored as empty "
            "text (and rank near the bottom). Drop them before scoring, or check the "
            "template's field names.",
            blank,
            len(texts),
            prefix,
        )
    return texts


def check_query(query: Any, name: str = "query") -> None:
    """Refuse a query that is not a string (a TypeError naming ``name``)."""
    if not isinstance(query, str):
        raise TypeError(f"{name} must be a string, got {type(query).__name__}")


def pair_texts(pairs: Any, template: PassageTemplate | None) -> list[tuple[str, str]]:
    """(query, passage text) for each (query, passage) pair; errors name ``pairs[i]``."""
    if pairs is None or isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise TypeError(
            f"pairs must be a list of (query, passage) pairs, got {type(pairs).__name__}"
        )
    items: list[tuple[str, str]] = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(
                f"pairs[{i}] must be a (query, passage) pair, got {type(pair).__name__}"
            )
        check_query(pair[0], f"pairs[{i}][0]")
        try:
            items.append((pair[0], passage_to_text(pair[1], template, i)))
        except (TypeError, ValueError) as error:
            message = str(error).replace(f"passages[{i}]", f"pairs[{i}][1]", 1)
            raise type(error)(message) from None
    return items


def _describe(record: Any) -> str:
    """What fields a record has, for error messages."""
    if isinstance(record, Mapping):
        keys = [str(k) for k in record]
        metadata = record.get("metadata")
        if isinstance(metadata, Mapping):
            keys += [f"metadata.{k}" for k in metadata]
        kind = "dict" if isinstance(record, dict) else type(record).__name__
    else:
        metadata = getattr(record, "metadata", None)
        keys = [str(k) for k in metadata] if isinstance(metadata, Mapping) else []
        kind = type(record).__name__ + (" with metadata" if keys else "")
    if not keys:
        return f"a {kind} with no fields"
    shown = ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "")
    return f"a {kind} with fields {shown}"
