"""Token-length policy shared by scoring and training: the "95th-percentile rule".

A leaf module: it imports nothing from :mod:`bge_rerank_plugins`, so every layer can use it.

``max_length="auto"`` means the same percentile wherever it is offered: the 95th percentile of
the (query, passage) pair lengths by the *nearest-rank* definition (the smallest length that at
least 95 % of the pairs do not exceed), rounded up to a multiple, raised to a floor and capped.
Each caller passes its own numbers: the scorer rounds to 8 with a floor of 8 and the model's
limit as the cap; the fine-tuning engine rounds to 16 with a floor of 32 and caps at 192 tokens
on CPU (512 on an accelerator) and at the model's limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["p95", "p95_length", "unknown_token_rate"]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def p95(lengths: Iterable[int]) -> int:
    """The nearest-rank 95th percentile of ``lengths``: the ``ceil(0.95 * n)``-th smallest.

    >>> p95(range(1, 101))
    95
    >>> p95([10, 500])  # with few values the percentile is the largest of them
    500

    Raises:
        ValueError: ``lengths`` is empty.
    """
    ordered = sorted(lengths)
    if not ordered:
        raise ValueError("lengths is empty: the percentile of no lengths is undefined")
    # ceil(0.95 * n) in exact integer arithmetic (the same rank as math.ceil(0.95 * n))
    rank = (95 * len(ordered) + 99) // 100
    return int(ordered[rank - 1])


def p95_length(lengths: Iterable[int], *, multiple: int, floor: int, cap: int | None) -> int:
    """The ``max_length`` the 95th-percentile rule picks for pairs of these token lengths.

    The nearest-rank 95th percentile (:func:`p95`), rounded up to a multiple of ``multiple``,
    at least ``floor`` and at most ``cap`` (no cap when None; the cap wins over the floor).

    Args:
        lengths: token lengths of the (query, passage) pairs; must not be empty.
        multiple: round the percentile up to a multiple of this (>= 1).
        floor: the smallest length returned (>= 1).
        cap: the largest length returned (>= 1), e.g. the model's limit; None: no cap.

    Raises:
        ValueError: ``lengths`` is empty, or an argument is < 1.
        TypeError: ``multiple``, ``floor`` or ``cap`` is not an int.

    >>> lengths = [20] * 90 + [100] * 8 + [300] * 2
    >>> p95(lengths)
    100
    >>> p95_length(lengths, multiple=16, floor=32, cap=192)
    112
    >>> p95_length([5, 6, 7], multiple=16, floor=32, cap=None)
    32
    >>> p95_length(lengths, multiple=8, floor=8, cap=64)
    64
    """
    multiple = _positive_int("multiple", multiple)
    floor = _positive_int("floor", floor)
    if cap is not None:
        cap = _positive_int("cap", cap)
    rounded = -(-p95(lengths) // multiple) * multiple
    chosen = max(floor, rounded)
    return chosen if cap is None else min(cap, chosen)


def unknown_token_rate(tokenizer: Any, texts: Sequence[str], *, max_length: int = 256) -> float:
    """Share of the tokens of ``texts`` that ``tokenizer`` maps to its unknown token.

    A high share means the model lacks the vocabulary of the data (an English model on Chinese
    text), which no fine-tuning fixes. 0.0 for a tokenizer without an unknown token (byte-level
    BPE) or no texts. Each text is cut at ``max_length`` tokens.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return 0.0
    encoded = tokenizer(
        list(texts), add_special_tokens=False, truncation=True, max_length=max_length
    )
    total = sum(len(ids) for ids in encoded["input_ids"])
    unknown = sum(list(ids).count(unk) for ids in encoded["input_ids"])
    return unknown / total if total else 0.0
