"""Long-document scoring: split a passage into overlapping token windows, score each, keep the max.

A cross-encoder sees at most ``max_length`` tokens per pair (512 for most rerankers), so the end
of a long document is normally cut off. :func:`score_chunked` instead cuts every passage into
windows that fit next to the query (consecutive windows share ``overlap`` tokens), scores all
windows of all passages in one batched call, and gives each passage the score of its best window
(``aggregate="max"``) or the mean of its windows. Cost grows linearly with document length
(one window per ``window_tokens - overlap`` tokens) instead of quadratically, as attention over
one long sequence would.

>>> from bge_rerank_plugins import CrossEncoderScorer
>>> from bge_rerank_plugins.chunking import score_chunked
>>> scorer = CrossEncoderScorer("BAAI/bge-reranker-v2-m3", max_length=512)  # doctest: +SKIP
>>> scores = score_chunked(scorer, "what causes scurvy?", [long_report])   # doctest: +SKIP
>>> scores[0], scores.windows                                               # doctest: +SKIP
(0.93, 7)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .tokenization import plain_encodings

if TYPE_CHECKING:
    from .scorer import CrossEncoderScorer

__all__ = ["AGGREGATES", "ChunkedScores", "score_chunked", "split_into_windows"]

#: Accepted values of ``aggregate``.
AGGREGATES = ("max", "mean")

# Re-tokenizing a window's text can differ from the slice it came from by a token at the edges.
_MARGIN = 2


class ChunkedScores(list):
    """Scores of passages in input order (a ``list`` of floats) with how they were obtained.

    Attributes:
        windows: how many windows were scored in all.
        best_window: for each passage, the index of its best-scoring window.
        window_counts: for each passage, how many windows it was cut into.
    """

    windows: int
    best_window: list[int]
    window_counts: list[int]


def split_into_windows(
    tokenizer: Any, text: str, window_tokens: int, overlap: int | None = None
) -> list[str]:
    """Cut ``text`` into pieces of at most ``window_tokens`` tokens sharing ``overlap`` tokens.

    Pieces are slices of the original text at token boundaries, so no characters are altered.

    Args:
        tokenizer: a ``transformers`` fast tokenizer (one with ``backend_tokenizer``).
        text: the passage.
        window_tokens: most tokens per piece (no special tokens counted).
        overlap: tokens shared by consecutive pieces; must be smaller than ``window_tokens``.
            Default: ``min(64, window_tokens // 4)``.

    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> split_into_windows(tokenizer, "one two three four five", 3, overlap=1)  # doctest: +SKIP
    ['one two three', 'three four five']
    """
    if not isinstance(window_tokens, int) or window_tokens < 1:
        raise ValueError(f"window_tokens must be a positive int, got {window_tokens!r}")
    if overlap is None:
        overlap = min(64, window_tokens // 4)
    if not isinstance(overlap, int) or not 0 <= overlap < window_tokens:
        raise ValueError(
            f"overlap must be an int in [0, window_tokens={window_tokens}), got {overlap!r}"
        )
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError("split_into_windows needs a fast tokenizer (with backend_tokenizer)")
    offsets = plain_encodings(tokenizer, [text])[0].offsets
    if len(offsets) <= window_tokens:
        return [text]
    pieces = []
    step = window_tokens - overlap
    start = 0
    while True:
        end = min(start + window_tokens, len(offsets))
        pieces.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            return pieces
        start += step


def score_chunked(
    scorer: CrossEncoderScorer,
    query: str,
    passages: Sequence[Any],
    *,
    window_tokens: int | None = None,
    overlap: int | None = None,
    aggregate: str = "max",
    normalize: bool | None = None,
) -> ChunkedScores:
    """Score long passages as overlapping windows and aggregate each passage's window scores.

    Args:
        scorer: the scorer to use (its template, max_length, backend and cache apply).
        query: the query.
        passages: strings or records (see :meth:`CrossEncoderScorer.passage_text`).
        window_tokens: passage tokens per window; default: what fits next to this query in the
            scorer's ``max_length`` (512 when it is ``None`` or ``"auto"``).
        overlap: tokens shared by consecutive windows, so a sentence cut at one window's edge
            appears whole in the next. Default: ``min(64, window_tokens // 4)``.
        aggregate: ``"max"`` (the best window: a relevant paragraph anywhere makes the document
            relevant) or ``"mean"``.
        normalize: as in :meth:`CrossEncoderScorer.score`.

    Returns:
        A :class:`ChunkedScores` list, one score per passage in input order.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}")
    texts = scorer.passage_texts(passages)
    tokenizer = scorer.tokenizer
    if window_tokens is None:
        limit = scorer.max_length if isinstance(scorer.max_length, int) else 512
        limit = min(limit, scorer.model_max_length)
        with scorer.encoder.lock:
            query_tokens = len(plain_encodings(tokenizer, [query])[0].ids)
        query_tokens = min(query_tokens, scorer.query_max_length or limit // 2)
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        window_tokens = limit - specials - query_tokens - _MARGIN
        if window_tokens <= (overlap or 0):
            raise ValueError(
                f"only {window_tokens} passage tokens fit next to the query in max_length="
                f"{limit}; lower overlap={overlap} or raise the scorer's max_length."
            )
    owners: list[int] = []
    windows: list[str] = []
    with scorer.encoder.lock:
        for i, text in enumerate(texts):
            pieces = split_into_windows(tokenizer, text, window_tokens, overlap)
            windows.extend(pieces)
            owners.extend([i] * len(pieces))
    flat = scorer.score_pairs([(query, w) for w in windows], normalize=normalize)
    per: list[list[float]] = [[] for _ in texts]
    for owner, value in zip(owners, flat):
        per[owner].append(value)
    if aggregate == "max":
        values = [max(v) for v in per]
    else:
        values = [sum(v) / len(v) for v in per]
    out = ChunkedScores(values)
    out.windows = len(windows)
    out.window_counts = [len(v) for v in per]
    out.best_window = [max(range(len(v)), key=v.__getitem__) for v in per]
    return out
