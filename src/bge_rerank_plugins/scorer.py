"""``CrossEncoderScorer``: the one place that runs a cross-encoder for inference.

Every integration (LlamaIndex, LangChain, the fine-tuning evaluator, the CLI, the server) scores
through this class, so a given model, query and passage get the same score everywhere.

>>> from bge_rerank_plugins import CrossEncoderScorer
>>> scorer = CrossEncoderScorer("BAAI/bge-reranker-v2-m3")  # doctest: +SKIP
>>> scorer.rank("what is a panda?", ["The giant panda is a bear.", "Pandas is a library."])
... # doctest: +SKIP
[Ranked(index=0, score=0.99, passage='The giant panda is a bear.'), ...]
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .batching import plan_batches
from .config import (
    DEFAULT_MODEL,
    SCORER_CONFIG_FIELDS,
    ScorerConfig,
    TemplateLike,
    dtype_from_use_fp16,
)
from .config import check_normalize as _check_normalize
from .errors import NonFiniteScoreError
from .fields import passage_to_text
from .loading import LoadedModel, load_cross_encoder, plain_encodings
from .score_cache import ScoreCache, pair_key

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_MODEL", "CrossEncoderScorer", "Ranked", "TemplateLike", "sigmoid"]

logger = logging.getLogger(__name__)

#: Default pairs per forward pass on CPU and on an accelerator (``batch_size=None``).
CPU_BATCH_SIZE = 8
ACCELERATOR_BATCH_SIZE = 32


class Ranked(NamedTuple):
    """One ranked passage: its position in the input, its score, and the passage itself."""

    index: int
    score: float
    passage: Any


def _is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _as_passages(passages: Any, name: str = "passages") -> Sequence[Any]:
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


def sigmoid(x: float) -> float:
    """The logistic function of a finite raw score, without overflow: the one used for every
    score in [0, 1] (``normalize=True`` here, the server's per-request sigmoid)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


_sigmoid = sigmoid  # the old private name, kept for one release


class CrossEncoderScorer:
    """Score (query, passage) pairs with any Hugging Face sequence-classification cross-encoder.

    Args:
        model: Hub id (default ``BAAI/bge-reranker-v2-m3``) or a local model directory.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; ``None`` picks the best available.
            A device this machine lacks raises
            :class:`~bge_rerank_plugins.errors.DeviceUnavailableError`.
        dtype: ``"auto"`` (float16 on CUDA, float32 elsewhere), ``"float32"``, ``"float16"``,
            ``"bfloat16"``. float16 on CPU falls back to float32 with one logged notice.
        use_fp16: FlagEmbedding's spelling of ``dtype="float16"``.
        max_length: most tokens per pair; an int, ``None`` (the model's limit, at most 512) or
            ``"auto"`` (the 95th percentile of each call's pair lengths, rounded up to a multiple
            of 8 and capped at the model's limit).
        query_max_length: most tokens kept of the query; the passage is what gets truncated,
            the query survives (up to this cap, and at most half of ``max_length``... see below).
        batch_size: most pairs per forward pass; ``None``: 8 on CPU, 32 on an accelerator.
            Pairs are length-sorted, so on a CPU small batches waste almost no padding and
            keep activations in cache (measured 1.8x faster than 32 with MiniLM).
        token_budget: most padded tokens per forward pass; defaults to
            ``batch_size * max_length`` (pairs are sorted by length, so batches of short pairs
            hold more of them only when this is set higher).
        normalize: ``True``: sigmoid scores in [0, 1]; ``False``: raw logits (a bool: a
            string such as ``"no"`` is a TypeError, not silently true).
        template: how records become passage text: a format string such as
            ``"{title}\\n{text}"``, a list of field names, or a :class:`PassageTemplate`.
        cache_size: keep up to this many raw scores in an LRU cache keyed by model, max_length
            and text (0 disables it).
        show_progress_bar: ``None`` shows a bar for calls of more than 2,000 pairs.
        revision, trust_remote_code: passed to ``from_pretrained``; remote code is off unless
            asked for.
        backend: ``"torch"`` (default), ``"onnx"`` (ONNX Runtime, float32, same scores to
            ~1e-5), ``"torch-int8"`` (int8 with per-token activation scales: the fastest on
            CPU, rankings kept closely) or ``"onnx-int8"`` (ONNX Runtime's dynamic int8);
            int8 scores shift slightly; see :mod:`bge_rerank_plugins.backends`.

    The query is never truncated to make room for the passage; if the query alone exceeds
    ``query_max_length`` (default: half of ``max_length``) it is cut to that many tokens, so
    every pair keeps some passage.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        device: str | None = None,
        dtype: str | None = "auto",
        use_fp16: bool | None = None,
        max_length: int | str | None = None,
        query_max_length: int | None = None,
        batch_size: int | None = None,
        token_budget: int | None = None,
        normalize: bool = True,
        template: TemplateLike = None,
        cache_size: int = 0,
        show_progress_bar: bool | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        backend: str = "torch",
    ) -> None:
        from .backends import make_forward

        # Every option is checked by ScorerConfig (one set of checks for the scorer, the
        # adapters, the CLI and Ray); use_fp16 is an alias that becomes dtype here.
        config = ScorerConfig(
            model=model,
            device=device,
            dtype=dtype_from_use_fp16(dtype, use_fp16),
            max_length=max_length,
            query_max_length=query_max_length,
            batch_size=batch_size,
            token_budget=token_budget,
            normalize=normalize,
            template=template,
            cache_size=cache_size,
            backend=backend,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
        #: The options this scorer was built with (a frozen :class:`ScorerConfig`).
        self.config = config
        self._loaded: LoadedModel = load_cross_encoder(
            config.model,
            device=config.device,
            dtype=config.dtype,
            revision=config.revision,
            trust_remote_code=config.trust_remote_code,
            # The other backends run a copy of their own: the torch weights stay on disk.
            load_weights=config.backend == "torch",
        )
        self.model_name = config.model
        self.max_length = config.max_length
        self.query_max_length = config.query_max_length
        batch_size = config.batch_size
        if batch_size is None:
            batch_size = CPU_BATCH_SIZE if self._loaded.device == "cpu" else ACCELERATOR_BATCH_SIZE
        self.batch_size = batch_size
        self.token_budget = config.token_budget
        self.normalize = config.normalize
        self.template = config.template
        self.show_progress_bar = show_progress_bar
        self.cache = ScoreCache(config.cache_size) if config.cache_size else None
        num_labels = getattr(self._loaded.config, "num_labels", 1)
        if num_labels not in (1, 2):
            raise ValueError(
                f"model={self.model_name!r} has {num_labels} output labels; a reranker needs 1 "
                "(a relevance logit) or 2 (not relevant / relevant)."
            )
        # Hook for tests and instrumentation: runs one padded batch, returns logits.
        self.backend = backend
        self._forward: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor] = (
            make_forward(backend, self._loaded) or _run_model
        )

    @classmethod
    def from_config(
        cls, config: ScorerConfig, *, show_progress_bar: bool | None = None
    ) -> CrossEncoderScorer:
        """The scorer that ``config`` describes.

        ``show_progress_bar`` is not part of the config: it changes no score and is a choice of
        the process that scores (a terminal, a server, a Ray worker).

        >>> from bge_rerank_plugins.config import ScorerConfig
        >>> config = ScorerConfig(model="BAAI/bge-reranker-v2-m3", backend="onnx")
        >>> CrossEncoderScorer.from_config(config).config == config  # doctest: +SKIP
        True
        """
        if not isinstance(config, ScorerConfig):
            raise TypeError(
                f"config must be a ScorerConfig, got {type(config).__name__}; build one with "
                "bge_rerank_plugins.ScorerConfig(model=..., ...)."
            )
        return cls(
            **{name: getattr(config, name) for name in SCORER_CONFIG_FIELDS},
            show_progress_bar=show_progress_bar,
        )

    # ----------------------------------------------------------------- properties
    @property
    def model(self) -> Any:
        """The underlying ``transformers`` model (shared with other scorers on the same model).

        For BERT, RoBERTa and XLM-RoBERTa classifiers its last layer computes the first token
        only (the one the classification head reads), so ``logits`` are exact but the last
        hidden state has length 1 (:mod:`bge_rerank_plugins.first_token`). With a backend
        other than ``"torch"`` the scorer does not use it, and reading it loads the weights.
        """
        return self._loaded.model

    @property
    def tokenizer(self) -> Any:
        return self._loaded.tokenizer

    @property
    def device(self) -> str:
        return self._loaded.device

    @property
    def dtype(self) -> torch.dtype:
        return self._loaded.dtype

    @property
    def model_max_length(self) -> int:
        """The longest pair the model accepts."""
        return self._loaded.max_length_limit

    # ----------------------------------------------------------------- public API
    def passage_text(self, passage: Any, index: int = 0) -> str:
        """The text that is scored for ``passage`` (a string or a record)."""
        return passage_to_text(passage, self.template, index)

    def score(
        self, query: str, passages: Iterable[Any], *, normalize: bool | None = None
    ) -> list[float]:
        """Scores of ``passages`` against ``query``, in input order.

        ``passages`` is a list (or any iterable, read once) of strings or records. A single
        string or record, ``None``, a record with no text field and a non-finite model score
        are errors, never a silently wrong result: see :meth:`_texts` and
        :class:`~bge_rerank_plugins.errors.NonFiniteScoreError`.

        >>> scorer.score("capital of China", ["Beijing is the capital.", "Capital gains tax."])
        ... # doctest: +SKIP
        [0.97, 0.02]
        """
        _check_query(query)
        texts = self._texts(passages)
        return self._score_texts([(query, t) for t in texts], normalize)

    def score_pairs(
        self, pairs: Iterable[Sequence[Any]], *, normalize: bool | None = None
    ) -> list[float]:
        """Scores of (query, passage) pairs, in input order."""
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
            _check_query(pair[0], f"pairs[{i}][0]")
            try:
                items.append((pair[0], self.passage_text(pair[1], i)))
            except (TypeError, ValueError) as error:
                message = str(error).replace(f"passages[{i}]", f"pairs[{i}][1]", 1)
                raise type(error)(message) from None
        return self._score_texts(items, normalize)

    def score_many(
        self,
        queries: Sequence[str],
        candidates: Sequence[Sequence[Any]],
        *,
        normalize: bool | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[list[float]]:
        """Score many queries, each against its own candidates, in one batched pass.

        ``show_progress_bar`` applies to this call only (``None``: the scorer's setting), so
        a scorer shared with other threads is never changed to get or hide a bar.

        >>> scorer.score_many(["q1", "q2"], [["a", "b"], ["c"]])  # doctest: +SKIP
        [[0.1, 0.8], [0.5]]
        """
        queries = _as_passages(queries, "queries")
        candidates = _as_passages(candidates, "candidates")
        if len(queries) != len(candidates):
            raise ValueError(
                f"queries and candidates must have the same length "
                f"({len(queries)} != {len(candidates)}): one candidate list per query."
            )
        items: list[tuple[str, str]] = []
        sizes: list[int] = []
        for qi, (query, passages) in enumerate(zip(queries, candidates)):
            _check_query(query, f"queries[{qi}]")
            texts = self._texts(passages, prefix=f"candidates[{qi}]")
            items.extend((query, t) for t in texts)
            sizes.append(len(texts))
        flat = self._score_texts(items, normalize, show_progress_bar)
        out: list[list[float]] = []
        start = 0
        for size in sizes:
            out.append(flat[start : start + size])
            start += size
        return out

    def rank(
        self,
        query: str,
        passages: Iterable[Any],
        top_k: int | None = None,
        *,
        normalize: bool | None = None,
    ) -> list[Ranked]:
        """Passages sorted best first as ``Ranked(index, score, passage)``; ties keep input order.

        >>> scorer.rank("q", ["a", "b", "c"], top_k=2)  # doctest: +SKIP
        [Ranked(index=2, score=0.9, passage='c'), Ranked(index=0, score=0.4, passage='a')]
        """
        if top_k is not None and (not _is_int(top_k) or top_k < 0):
            raise ValueError(f"top_k must be a non-negative int or None, got {top_k!r}")
        passages = _as_passages(passages)
        scores = self.score(query, passages, normalize=normalize)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        if top_k is not None:
            order = order[:top_k]
        return [Ranked(i, scores[i], passages[i]) for i in order]

    # ----------------------------------------------------------------- internals
    def _texts(self, passages: Iterable[Any], prefix: str = "passages") -> list[str]:
        """The text of each passage; errors name ``prefix[index]``.

        A record with no data to score (no ``text`` field, or none of the template's fields) is
        a ValueError; records whose fields are present but blank are scored as empty text and
        counted in one warning.
        """
        passages = _as_passages(passages, prefix)
        texts = []
        blank = 0
        for i, passage in enumerate(passages):
            try:
                text = self.passage_text(passage, i)
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

    def resolve_max_length(self, pair_lengths: Sequence[int]) -> int:
        """The max_length used for pairs of these (untruncated) token lengths."""
        limit = self.model_max_length
        if self.max_length is None:
            return min(limit, 512)
        if self.max_length == "auto":
            if not pair_lengths:
                return min(limit, 512)
            ordered = sorted(pair_lengths)
            p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
            return min(limit, max(8, -(-p95 // 8) * 8))
        return min(int(self.max_length), limit)

    def _score_texts(
        self,
        items: list[tuple[str, str]],
        normalize: bool | None,
        show_progress_bar: bool | None = None,
    ) -> list[float]:
        if normalize is not None:
            _check_normalize(normalize)
        if not items:
            return []
        raw: list[float | None] = [None] * len(items)
        todo = list(range(len(items)))
        # A fixed max_length is known before tokenizing, so cache hits skip the tokenizer (the
        # bulk of a fully cached call); "auto" depends on the token lengths of the call.
        encoded = self._encode(items) if self.max_length == "auto" else None
        max_length = encoded["max_length"] if encoded else self.resolve_max_length(())
        if self.cache is not None:
            model_key = (self._loaded.name, str(self.dtype), self.backend)
            keys = [pair_key(model_key, max_length, q, p) for q, p in items]
            todo = []
            for i, key in enumerate(keys):
                value = self.cache.get(key)
                if value is None:
                    todo.append(i)
                else:
                    raw[i] = value
        if todo:
            if encoded is None:
                encoded = self._encode([items[i] for i in todo])
                rows = list(range(len(todo)))
            else:
                rows = todo
            logits = self._run(
                [encoded["input_ids"][i] for i in rows],
                [encoded["token_type_ids"][i] for i in rows] if encoded["token_type_ids"] else None,
                show_progress_bar,
            )
            for i, value in zip(todo, logits):
                raw[i] = value
                if self.cache is not None:
                    self.cache.put(keys[i], value)
        use_sigmoid = self.normalize if normalize is None else normalize
        if use_sigmoid:
            return [_sigmoid(v) for v in raw]  # type: ignore[arg-type]
        return [float(v) for v in raw]  # type: ignore[arg-type]

    def _encode(self, items: list[tuple[str, str]]) -> dict[str, Any]:
        """Tokenize pairs: truncate only the passage, cap the query, report truncation once."""
        tokenizer = self.tokenizer
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        queries = sorted({q for q, _ in items})
        # The tokenizer's backend keeps truncation settings as state: one call at a time.
        with self._loaded.lock:
            query_tokens, query_offsets = _token_counts(tokenizer, queries, offsets=True)
            passage_lengths, _ = _token_counts(tokenizer, [p for _, p in items])
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
        with self._loaded.lock:
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

    def _run(
        self,
        input_ids: list[list[int]],
        token_types: list[list[int]] | None,
        show_progress_bar: bool | None = None,
    ) -> list[float]:
        import torch

        lengths = [len(ids) for ids in input_ids]
        longest = max(lengths)
        budget = self.token_budget or self.batch_size * max(longest, 1)
        batches = plan_batches(lengths, self.batch_size, budget)
        out: list[float] = [0.0] * len(input_ids)
        non_finite = 0
        progress = self.show_progress_bar if show_progress_bar is None else show_progress_bar
        if progress is None:
            progress = len(input_ids) > 2000
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(input_ids), desc="Scoring pairs", unit="pair")
        try:
            with torch.inference_mode():
                for batch in batches:
                    scores, bad = self._score_batch(batch, input_ids, token_types)
                    non_finite += bad
                    for i, s in zip(batch, scores):
                        out[i] = s
                    if bar is not None:
                        bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        if non_finite:
            raise self._non_finite_error(non_finite, len(input_ids))
        return out

    def _non_finite_error(self, count: int, total: int) -> NonFiniteScoreError:
        import torch

        if self.backend == "torch" and self.dtype != torch.float32:
            precision = f"in {self.dtype} and again in float32"
        else:
            precision = f"with backend={self.backend!r} in float32"
        return NonFiniteScoreError(
            f"model={self.model_name!r} gave a NaN or infinite score to {count} of {total} "
            f"pairs ({precision}). The weights are most likely broken: a fine-tuning run that "
            "diverged, a bad conversion or a corrupt file. Check the model on a few pairs with "
            "dtype='float32', and retrain or re-export it; no scores were returned, since a NaN "
            "would sort arbitrarily."
        )

    def _score_batch(
        self,
        batch: list[int],
        input_ids: list[list[int]],
        token_types: list[list[int]] | None,
    ) -> tuple[list[float], int]:
        """Raw scores of one batch and how many are not finite.

        Halves the batch on CUDA out-of-memory; rescores it in float32 if half precision gave a
        non-finite score.
        """
        import torch

        tensors = _pad(batch, input_ids, token_types, self.tokenizer.pad_token_id, self.device)
        try:
            with self._loaded.lock:
                logits = self._forward(
                    self._loaded.model if self.backend == "torch" else None, tensors
                )
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            half = len(batch) // 2
            logger.warning(
                "Out of memory on a batch of %d pairs; retrying as two batches of %d and %d.",
                len(batch),
                half,
                len(batch) - half,
            )
            first, first_bad = self._score_batch(batch[:half], input_ids, token_types)
            second, second_bad = self._score_batch(batch[half:], input_ids, token_types)
            return first + second, first_bad + second_bad
        scores = _logits_to_scores(logits)
        finite = torch.isfinite(scores)
        if self.backend == "torch" and self.dtype != torch.float32 and not finite.all():
            logger.warning(
                "Non-finite scores in %s for a batch of %d pairs; rescoring it in float32.",
                self.dtype,
                len(batch),
            )
            with self._loaded.lock:
                logits = self._forward(self._loaded.float32_model(), tensors)
            scores = _logits_to_scores(logits)
            finite = torch.isfinite(scores)
        bad = int(finite.numel() - finite.sum().item())
        return scores.float().cpu().tolist(), bad


def _token_counts(
    tokenizer: Any, texts: list[str], offsets: bool = False
) -> tuple[list[int], list[Any]]:
    """Token counts (no special tokens) and, if asked, character offsets of each text."""
    if getattr(tokenizer, "backend_tokenizer", None) is not None:
        encodings = plain_encodings(tokenizer, texts)
        return [len(e.ids) for e in encodings], [e.offsets for e in encodings] if offsets else []
    encoded = tokenizer(
        texts, add_special_tokens=False, return_offsets_mapping=offsets, verbose=False
    )
    return [len(ids) for ids in encoded["input_ids"]], encoded.get("offset_mapping", [])


def _check_query(query: Any, name: str = "query") -> None:
    if not isinstance(query, str):
        raise TypeError(f"{name} must be a string, got {type(query).__name__}")


def _pad(
    batch: list[int],
    input_ids: list[list[int]],
    token_types: list[list[int]] | None,
    pad_id: int | None,
    device: str,
) -> dict[str, torch.Tensor]:
    import torch

    longest = max(len(input_ids[i]) for i in batch)
    pad = 0 if pad_id is None else pad_id
    ids = torch.full((len(batch), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    types = torch.zeros((len(batch), longest), dtype=torch.long) if token_types else None
    for row, i in enumerate(batch):
        n = len(input_ids[i])
        ids[row, :n] = torch.tensor(input_ids[i])
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(token_types[i])  # type: ignore[index]
    tensors = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if types is not None:
        tensors["token_type_ids"] = types.to(device)
    return tensors


def _run_model(model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**tensors, return_dict=True).logits


def _logits_to_scores(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if logits.shape[-1] == 2:
        # Log-odds of "relevant": its sigmoid equals the softmax probability of label 1.
        return logits[:, 1] - logits[:, 0]
    return logits[:, 0]
