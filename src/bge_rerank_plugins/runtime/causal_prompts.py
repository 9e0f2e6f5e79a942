"""How causal-LM rerankers turn a (query, passage) pair into tokens: their prompts.

Two layouts, each an encoder with the interface of
:class:`~bge_rerank_plugins.tokenization.PairEncoder` (``encode(items)``,
``resolve_max_length(lengths)``), so the scorer's batching and score cache serve them unchanged:

- :class:`BgeDecoderEncoder` (``BAAI/bge-reranker-v2-gemma``): FlagEmbedding's
  ``FlagLLMReranker`` tokens, ``<bos> "A: {query}" "\\n" "B: {passage}" "\\n" "{prompt}"``, each
  piece tokenized on its own, the query capped at ``query_max_length`` (default 3/4 of
  ``max_length``), the passage at ``max_length`` and the pair at ``max_length`` plus the
  separator and prompt lengths, exactly as FlagEmbedding 1.4 does; the prompt is never cut.
- :class:`ChatTemplateEncoder` (Qwen3-Reranker, mxbai-rerank-v2 and sentence-transformers v6
  CrossEncoders with a LogitScore module): the tokenizer's chat template rendered with a
  ``query`` and a ``document`` message (and the instruction as a ``system`` message), as
  sentence-transformers v6 does, tokenized as one text. ``max_length`` caps the whole sequence;
  only document tokens are dropped, so the instruction and the answer cue after the document
  always survive.

Both return ``token_type_ids`` marking each row's shared prefix (0: the tokens before the
passage, the same for every passage of a query) and the rest (1): the causal runner
(:mod:`bge_rerank_plugins.runtime.backends.causal`) computes a prefix once per query.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..tokenization import PairEncoder, clean

__all__ = [
    "BGE_DEFAULT_PROMPT",
    "QWEN3_RERANKER_TEMPLATE",
    "BgeDecoderEncoder",
    "ChatTemplateEncoder",
]

logger = logging.getLogger(__name__)

#: FlagEmbedding's default prompt for bge-reranker-v2-gemma.
BGE_DEFAULT_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the "
    "query by providing a prediction of either 'Yes' or 'No'."
)

#: The Qwen3-Reranker prompt as a chat template over ``query`` / ``document`` messages, used when
#: a model's own chat template does not render those roles (the original Qwen3-Reranker files).
QWEN3_RERANKER_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: "
    '{{ messages | selectattr("role", "eq", "system") | map(attribute="content") | first '
    '| default("Given a web search query, retrieve relevant passages that answer the query") }}'
    "\n<Query>: "
    '{{ messages | selectattr("role", "eq", "query") | map(attribute="content") | first }}'
    "\n<Document>: "
    '{{ messages | selectattr("role", "eq", "document") | map(attribute="content") | first }}'
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)

_SENTINEL = "\u2063DOCUMENT\u2063"


class _CausalEncoder:
    """What both layouts share: the max_length rule of the scorer and the truncation warning."""

    def __init__(
        self,
        tokenizer: Any,
        lock: Any,
        *,
        max_length: int | str | None,
        query_max_length: int | None,
        model_max_length: int,
        instruction: str | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.lock = lock
        self.max_length = max_length
        self.query_max_length = query_max_length
        self.model_max_length = model_max_length
        self.instruction = instruction
        self._lengths = PairEncoder(
            tokenizer,
            lock,
            max_length=max_length,
            query_max_length=query_max_length,
            model_max_length=model_max_length,
        )

    def resolve_max_length(self, pair_lengths: Sequence[int]) -> int:
        """The max_length used for pairs of these (untruncated) token lengths."""
        return self._lengths.resolve_max_length(pair_lengths)

    def _ids(self, texts: list[str], **options: Any) -> list[list[int]]:
        with self.lock:
            clean(self.tokenizer)
            return self.tokenizer(texts, add_special_tokens=False, **options)["input_ids"]

    def _warn(self, truncated: int, total: int, max_length: int) -> None:
        if truncated:
            logger.warning(
                "Truncated %d of %d pairs to max_length=%d tokens (the passage was cut; the "
                "query, the instruction and the answer cue kept). Raise max_length (model "
                "limit %d) or split long documents into chunks.",
                truncated,
                total,
                max_length,
                self.model_max_length,
            )


class BgeDecoderEncoder(_CausalEncoder):
    """FlagEmbedding's ``FlagLLMReranker`` tokenization (bge-reranker-v2-gemma).

    ``instruction`` replaces FlagEmbedding's ``prompt`` (the text after the passage).
    """

    def __init__(self, tokenizer: Any, lock: Any, **options: Any) -> None:
        super().__init__(tokenizer, lock, **options)
        prompt = self.instruction if self.instruction is not None else BGE_DEFAULT_PROMPT
        self.sep_ids, self.prompt_ids = self._ids(["\n", prompt])
        bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
        self.bos = [bos] if bos is not None and bos != pad else []

    def encode(self, items: list[tuple[str, str]]) -> dict[str, Any]:
        """Token ids of each pair, the prefix marker, the max_length used and the truncations."""
        queries = sorted({q for q, _ in items})
        query_ids = dict(zip(queries, self._ids([f"A: {q}" for q in queries])))
        passage_ids = self._ids([f"B: {p}" for _, p in items])
        sep, prompt = self.sep_ids, self.prompt_ids
        core = [
            len(self.bos) + len(query_ids[q]) + len(sep) + len(p)
            for (q, _), p in zip(items, passage_ids)
        ]
        max_length = self.resolve_max_length(core)
        query_cap = self.query_max_length or max_length * 3 // 4
        # FlagEmbedding: the pair (bos + query, separator + passage) may take max_length plus
        # the separator and prompt lengths, and the separator and prompt come after it.
        limit = max_length + len(sep) + len(prompt)
        rows, types, truncated = [], [], 0
        for (query, _), passage in zip(items, passage_ids):
            first = self.bos + query_ids[query][:query_cap]
            second = sep + passage[:max_length]
            room = max(0, limit - len(first))
            if len(second) > room or len(passage) > max_length:
                truncated += 1
            second = second[:room]
            ids = first + second + sep + prompt
            shared = len(first) + min(len(sep), len(second))
            rows.append(ids)
            types.append([0] * shared + [1] * (len(ids) - shared))
        self._warn(truncated, len(items), max_length)
        return {
            "input_ids": rows,
            "token_type_ids": types,
            "max_length": max_length,
            "truncated": truncated,
        }


class ChatTemplateEncoder(_CausalEncoder):
    """The chat-template layout of sentence-transformers v6 causal CrossEncoders (Qwen3-Reranker).

    ``instruction`` is sent as a ``system`` message (sentence-transformers' ``prompt=``); the
    Qwen3 template puts it on its ``<Instruct>:`` line. ``None`` keeps the template's default.
    """

    def __init__(self, tokenizer: Any, lock: Any, **options: Any) -> None:
        super().__init__(tokenizer, lock, **options)
        own = getattr(tokenizer, "chat_template", None)
        self.template = own if own and self._renders_pair(own) else QWEN3_RERANKER_TEMPLATE

    def _render(self, query: str, document: str, template: Any = None) -> str:
        messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
        if self.instruction is not None:
            messages.insert(0, {"role": "system", "content": self.instruction})
        return self.tokenizer.apply_chat_template(
            messages, chat_template=template or self.template, tokenize=False
        )

    def _renders_pair(self, template: Any) -> bool:
        try:
            text = self._render("\u2063Q\u2063", _SENTINEL, template)
        except Exception:  # any template error means: not this layout
            return False
        return "\u2063Q\u2063" in text and text.count(_SENTINEL) == 1

    def _split(self, query: str, document: str) -> tuple[str, str]:
        """The rendered text before and after the document, for this query."""
        head, _, tail = self._render(query, _SENTINEL).partition(_SENTINEL)
        if self._render(query, document) != head + document + tail:
            raise ValueError(
                "the chat template of this model changes the document text it renders, so the "
                "passage cannot be truncated on its own; pass a template that inserts the "
                "'document' message's content as it is."
            )
        return head, tail

    def encode(self, items: list[tuple[str, str]]) -> dict[str, Any]:
        """Token ids of each pair, the prefix marker, the max_length used and the truncations."""
        with self.lock:
            clean(self.tokenizer)
            queries = sorted({q for q, _ in items})
            cut = self._cut_queries(queries)
            first: dict[str, str] = {}
            for query, document in items:
                first.setdefault(query, document)
            # The template is rendered (and checked) once per query, with its first passage.
            splits = {q: self._split(cut[q], d) for q, d in first.items()}
            texts = [splits[q][0] + d + splits[q][1] for q, d in items]
            encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        max_length = self.resolve_max_length([len(ids) for ids in encoded["input_ids"]])
        rows, prefixes, truncated = [], [], 0
        for (query, document), ids, offsets in zip(
            items, encoded["input_ids"], encoded["offset_mapping"]
        ):
            start = len(splits[query][0])
            end = start + len(document)
            shared = next((i for i, (_, e) in enumerate(offsets) if e > start), len(ids))
            stop = next((i for i, (_, e) in enumerate(offsets) if e > end), len(ids))
            over = len(ids) - max_length
            if over > 0:
                truncated += 1
                keep = max(shared, stop - over)
                ids = ids[:keep] + ids[stop:]
            rows.append(list(ids))
            prefixes.append(shared)
        prefixes = _common_prefixes([q for q, _ in items], rows, prefixes)
        types = [[0] * n + [1] * (len(ids) - n) for ids, n in zip(rows, prefixes)]
        self._warn(truncated, len(items), max_length)
        return {
            "input_ids": rows,
            "token_type_ids": types,
            "max_length": max_length,
            "truncated": truncated,
        }

    def _cut_queries(self, queries: list[str]) -> dict[str, str]:
        """Each query, cut at ``query_max_length`` tokens (default: half of max_length)."""
        cap = self.query_max_length or self.resolve_max_length(()) // 2
        encoded = self.tokenizer(queries, add_special_tokens=False, return_offsets_mapping=True)
        cut = {}
        for query, ids, offsets in zip(queries, encoded["input_ids"], encoded["offset_mapping"]):
            cut[query] = query[: offsets[cap - 1][1]] if len(ids) > cap else query
        return cut


def _common_prefixes(queries: list[str], rows: list[list[int]], prefixes: list[int]) -> list[int]:
    """Each row's shared prefix, shortened to what all rows of its query have in common.

    A token at the start of a passage can merge with the template text before it (a byte-level
    BPE may emit the space before ``The`` alone but keep it in `` Pandas``), so the tokens before
    the passage can differ in their last place between two passages of one query.
    """
    first: dict[str, int] = {}
    common: dict[str, int] = {}
    for row, query in enumerate(queries):
        ref = first.setdefault(query, row)
        limit = min(prefixes[row], common.get(query, prefixes[ref]))
        same = 0
        for a, b in zip(rows[row][:limit], rows[ref][:limit]):
            if a != b:
                break
            same += 1
        common[query] = same
    return [common[q] for q in queries]
