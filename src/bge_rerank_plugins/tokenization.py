"""Tokenization shared by scoring, chunking, the runtime and training.

A leaf module: it imports nothing from :mod:`bge_rerank_plugins`, so every layer can use it.
It holds the tokenizer-state hygiene (:func:`clean`, :func:`plain_encodings`), token lengths
(:func:`token_lengths`), the padded example batch that load-time checks and exports run
(:func:`example_batch`), the scorer's pair encoding (:class:`PairEncoder`: the query is kept,
the passage truncated) and the "95th-percentile rule" below.

``max_length="auto"`` means the same percentile wherever it is offered: the 95th percentile of
the (query, passage) pair lengths by the *nearest-rank* definition (the smallest length that at
least 95 % of the pairs do not exceed), rounded up to a multiple, raised to a floor and capped.
Each caller passes its own numbers: the scorer rounds to 8 with a floor of 8 and the model's
limit as the cap; the fine-tuning engine rounds to 16 with a floor of 32 and caps at 192 tokens
on CPU (512 on an accelerator) and at the model's limit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading

    import torch

__all__ = [
    "PairEncoder",
    "clean",
    "example_batch",
    "p95",
    "p95_length",
    "plain_encodings",
    "token_lengths",
    "unknown_token_rate",
]

logger = logging.getLogger(__name__)


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


def clean(tokenizer: Any) -> None:
    """Clear the truncation and padding that a fast tokenizer's backend keeps as state.

    Some exported ``tokenizer.json`` files (e.g. all-MiniLM-L6-v2's) bake in truncation at 128
    and fixed padding, and ``transformers`` leaves whatever its last call set; the scorer decides
    truncation itself. A slow tokenizer (no ``backend_tokenizer``) is left as it is.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()


def plain_encodings(tokenizer: Any, texts: list[str]) -> list[Any]:
    """Each text's ``tokenizers`` encoding: no special tokens, not truncated, not padded.

    The fast tokenizer's backend keeps truncation and padding as state, and ``transformers``
    leaves it as the last call set it: after ``tokenizer(..., padding=True)`` (the load-time
    check, an ONNX export, a user's own call) ``encode_batch`` pads every text to the longest.
    Both are reset here, so counts and offsets are the texts' own. The caller serialises calls
    on a shared tokenizer (the model's lock, :attr:`PairEncoder.lock`).

    >>> import tempfile
    >>> from transformers import AutoTokenizer
    >>> from bge_rerank_plugins.testing import build_tiny_model
    >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("bert", tempfile.mkdtemp()))
    >>> texts = ["panda", "the giant panda eats bamboo"]
    >>> _ = tokenizer(texts, padding=True)
    >>> [len(e.ids) for e in plain_encodings(tokenizer, texts)] == [
    ...     len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    True
    """
    clean(tokenizer)
    return tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)


def token_lengths(
    tokenizer: Any, texts: list[str], offsets: bool = False
) -> tuple[list[int], list[Any]]:
    """Token counts (no special tokens) of ``texts`` and, if asked, each text's character offsets.

    Fast tokenizers go through :func:`plain_encodings`; the caller holds the model's lock.
    """
    if getattr(tokenizer, "backend_tokenizer", None) is not None:
        encodings = plain_encodings(tokenizer, texts)
        return [len(e.ids) for e in encodings], [e.offsets for e in encodings] if offsets else []
    encoded = tokenizer(
        texts, add_special_tokens=False, return_offsets_mapping=offsets, verbose=False
    )
    return [len(ids) for ids in encoded["input_ids"]], encoded.get("offset_mapping", [])


def example_batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    """Two (query, passage) pairs of different lengths, tokenized and padded (PyTorch tensors).

    The padding matters to its users (tracing an ONNX export, checking a modified layer): a
    batch without padding could hide a mistake in how the attention mask is handled. Tokenizing
    with padding changes the tokenizer's state: call it under the model's lock.
    """
    return dict(
        tokenizer(
            ["what is a panda?", "capital of china"],
            ["The giant panda is a bear native to China that eats bamboo.", "Beijing."],
            padding=True,
            return_tensors="pt",
        )
    )


#: The scorer's numbers for ``max_length="auto"`` (the cap is the model's limit).
AUTO_MULTIPLE = 8
AUTO_FLOOR = 8
#: ``max_length`` when none is given (or "auto" has no pairs): the model's limit, at most this.
DEFAULT_MAX_LENGTH = 512


class PairEncoder:
    """Tokenizes (query, passage) pairs the scorer's way: the passage is truncated, the query kept.

    Args:
        tokenizer: the model's ``transformers`` tokenizer (shared by every scorer on the model).
        lock: the lock that serialises use of that tokenizer (the loaded model's, so load-time
            checks and exports, which tokenize with padding, never interleave with scoring).
        max_length: an int, ``None`` (the model's limit, at most 512) or ``"auto"`` (the 95th
            percentile of each call's pair lengths, rounded up to a multiple of 8, at least 8,
            capped at the model's limit).
        query_max_length: most tokens kept of the query (``None``: half of ``max_length``).
        model_max_length: the longest pair the model accepts.
    """

    def __init__(
        self,
        tokenizer: Any,
        lock: threading.RLock,
        *,
        max_length: int | str | None,
        query_max_length: int | None,
        model_max_length: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.lock = lock
        self.max_length = max_length
        self.query_max_length = query_max_length
        self.model_max_length = model_max_length

    def resolve_max_length(self, pair_lengths: Sequence[int]) -> int:
        """The max_length used for pairs of these (untruncated) token lengths."""
        limit = self.model_max_length
        if self.max_length is None or (self.max_length == "auto" and not pair_lengths):
            return min(limit, DEFAULT_MAX_LENGTH)
        if self.max_length == "auto":
            return p95_length(pair_lengths, multiple=AUTO_MULTIPLE, floor=AUTO_FLOOR, cap=limit)
        return min(int(self.max_length), limit)

    def encode(self, items: list[tuple[str, str]]) -> dict[str, Any]:
        """Tokenize pairs: truncate only the passage, cap the query, report truncation once.

        Returns ``input_ids``, ``token_type_ids`` (``None`` for models without them),
        ``max_length`` and ``truncated`` (how many pairs lost passage tokens).
        """
        tokenizer = self.tokenizer
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        queries = sorted({q for q, _ in items})
        # The tokenizer's backend keeps truncation settings as state: one call at a time.
        with self.lock:
            query_tokens, query_offsets = token_lengths(tokenizer, queries, offsets=True)
            passage_lengths, _ = token_lengths(tokenizer, [p for _, p in items])
        query_lengths = dict(zip(queries, query_tokens))
        full_lengths = [
            query_lengths[q] + n + specials for (q, _), n in zip(items, passage_lengths)
        ]
        max_length = self.resolve_max_length(full_lengths)
        query_cap = min(
            self.query_max_length or max(1, (max_length - specials) // 2),
            max_length - specials - 1,
        )
        # A query over the cap is cut at a token boundary of its own text, so the pair
        # tokenizer can then truncate the passage alone ("only_second").
        cut_text = {}
        for q, offsets in zip(queries, query_offsets):
            if query_lengths[q] > query_cap:
                cut_text[q] = q[: offsets[query_cap - 1][1]]
        truncated = sum(
            1
            for (q, _), n in zip(items, passage_lengths)
            if min(query_lengths[q], query_cap) + n + specials > max_length
        )
        cut_queries = sum(1 for q, _ in items if q in cut_text)
        with self.lock:
            encoded = tokenizer(
                [cut_text.get(q, q) for q, _ in items],
                [p for _, p in items],
                truncation="only_second",
                max_length=max_length,
                padding=False,
            )
        if truncated or cut_queries:
            logger.warning(
                "Truncated %d of %d pairs to max_length=%d tokens (the passage was cut; the "
                "query kept)%s. Raise max_length (model limit %d) or split long documents "
                "into chunks to score all of their text.",
                truncated,
                len(items),
                max_length,
                f"; {cut_queries} pairs had a query longer than query_max_length={query_cap}, "
                "which was cut"
                if cut_queries
                else "",
                self.model_max_length,
            )
        return {
            "input_ids": encoded["input_ids"],
            "token_type_ids": encoded.get("token_type_ids"),
            "max_length": max_length,
            "truncated": truncated,
        }
