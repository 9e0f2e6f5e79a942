"""Per-request truncation: the knobs TEI, Cohere and vLLM clients send, applied to one request.

The scorer truncates every pair to its own ``max_length`` with the query kept (the passage is
cut, the query only past ``query_max_length``: :class:`~bge_rerank_plugins.tokenization.
PairEncoder`). A request may ask for less, or for no truncation at all:

* TEI ``truncate=false``: refuse a pair the scorer would cut (413, as TEI answers, naming the
  field); ``truncation_direction="left"``: cut the start of the passage, not its end;
* Cohere v2 / vLLM ``max_tokens_per_doc``: keep at most that many tokens of each document;
* vLLM ``max_tokens_per_query``: keep at most that many tokens of the query;
* vLLM ``truncate_prompt_tokens``: at most that many tokens per pair (``-1``: the model's limit).

The scorer is shared, so none of this rebuilds or reconfigures it: the texts are cut at token
boundaries here (with the scorer's tokenizer, under its lock) before they reach the batcher, and
the scorer's own truncation then has nothing left to cut. A request that sets no knob is not
tokenized here at all.

>>> Truncation().is_default
True
>>> Truncation(max_doc_tokens=64).is_default
False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tokenization import token_lengths
from .errors import ApiError, ErrorKind

__all__ = ["Truncation", "apply_truncation", "pair_token_counts"]


@dataclass(frozen=True)
class Truncation:
    """What one request asks of truncation; the field names say where each value came from.

    Attributes:
        truncate: ``False``: a pair that does not fit is an error, never cut.
        left: cut the start of a passage instead of its end.
        max_doc_tokens, max_query_tokens: most tokens kept of each passage / of the query.
        max_pair_tokens: most tokens per pair (special tokens included); ``None``: the scorer's.
        truncate_field: the request field that forbids cutting, named in its errors.
    """

    truncate: bool = True
    left: bool = False
    max_doc_tokens: int | None = None
    max_query_tokens: int | None = None
    max_pair_tokens: int | None = None
    truncate_field: str = "truncate"

    @property
    def is_default(self) -> bool:
        """True when the request leaves truncation to the scorer (nothing to do here)."""
        return (
            self.truncate
            and not self.left
            and self.max_doc_tokens is None
            and self.max_query_tokens is None
            and self.max_pair_tokens is None
        )


def _encoder(scorer: Any) -> Any:
    encoder = getattr(scorer, "encoder", None)
    if encoder is None or getattr(encoder, "tokenizer", None) is None:
        raise ApiError(
            ErrorKind.INVALID,
            "This server's scorer has no tokenizer (a custom scorer_factory), so per-request "
            "truncation settings cannot be applied; leave them out.",
            field="body",
        )
    return encoder


def _cut(text: str, offsets: list[tuple[int, int]], keep: int, left: bool) -> str:
    """``text`` cut to ``keep`` of its tokens at a token boundary (the last ones if ``left``)."""
    if keep <= 0:
        return ""
    if keep >= len(offsets):
        return text
    if left:
        return text[offsets[len(offsets) - keep][0] :]
    return text[: offsets[keep - 1][1]]


def pair_token_counts(scorer: Any, pairs: list[tuple[str, str]]) -> int:
    """Tokens the model reads for ``pairs`` (special tokens included, before truncation)."""
    encoder = getattr(scorer, "encoder", None)
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is None:
        return 0
    queries = sorted({q for q, _ in pairs})
    with encoder.lock:
        query_lengths, _ = token_lengths(tokenizer, queries)
        text_lengths, _ = token_lengths(tokenizer, [t for _, t in pairs])
    lengths = dict(zip(queries, query_lengths))
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    return sum(lengths[q] + n + specials for (q, _), n in zip(pairs, text_lengths))


def apply_truncation(
    scorer: Any, query: str, texts: list[str], rule: Truncation, field: str
) -> tuple[str, list[str]]:
    """The query and texts cut as ``rule`` asks (the query kept); ``field`` names the texts.

    Blocking (it tokenizes under the model's lock): call it on a worker thread.

    Raises:
        ApiError: 413 for a pair that does not fit with ``truncate=False`` (TEI's status for an
            over-long input), naming the text (or ``query``) at fault.
    """
    if rule.is_default or not texts:
        return query, texts
    encoder = _encoder(scorer)
    tokenizer = encoder.tokenizer
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    with encoder.lock:
        (query_length,), (query_offsets,) = token_lengths(tokenizer, [query], offsets=True)
        text_lengths, text_offsets = token_lengths(tokenizer, texts, offsets=True)
    scorer_limit = encoder.resolve_max_length(())
    pair = rule.max_pair_tokens
    limit = scorer_limit if pair is None else min(pair, scorer_limit)
    # The scorer's own cap on the query (PairEncoder.encode), at this request's pair limit.
    query_cap = min(
        encoder.query_max_length or max(1, (limit - specials) // 2), limit - specials - 1
    )
    if rule.max_query_tokens is not None:
        query_cap = min(query_cap, rule.max_query_tokens)
    if query_length > query_cap:
        if not rule.truncate:
            raise ApiError(
                ErrorKind.PAYLOAD_TOO_LARGE,
                f"query has {query_length} tokens; at most {query_cap} fit with the passages "
                f"(pair limit {limit} tokens) and {rule.truncate_field}=false forbids cutting "
                f"it. Send {rule.truncate_field}=true or a shorter query.",
                field="query",
            )
        query = _cut(query, query_offsets, query_cap, left=False)
        query_length = query_cap
    budget = max(0, limit - specials - query_length)
    if rule.max_doc_tokens is not None:
        budget = min(budget, rule.max_doc_tokens)
    out = []
    for i, (text, n, offsets) in enumerate(zip(texts, text_lengths, text_offsets)):
        if n > budget and not rule.truncate:
            raise ApiError(
                ErrorKind.PAYLOAD_TOO_LARGE,
                f"{field}[{i}] with the query is {query_length + n + specials} tokens; the "
                f"limit is {limit} and {rule.truncate_field}=false forbids cutting it. Send "
                f"{rule.truncate_field}=true or split the text into chunks.",
                field=f"{field}[{i}]",
            )
        out.append(_cut(text, offsets, budget, rule.left) if n > budget else text)
    return query, out
