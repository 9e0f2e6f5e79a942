"""``CrossEncoderScorer``: the one place that runs a cross-encoder for inference.

Every integration (LlamaIndex, LangChain, evaluation, the CLI, the server, Ray) scores through
this class, so a given model, query and passage get the same score everywhere (in-training
validation uses sentence-transformers' evaluator).

>>> from bge_rerank_plugins import CrossEncoderScorer
>>> scorer = CrossEncoderScorer("BAAI/bge-reranker-v2-m3")  # doctest: +SKIP
>>> scorer.rank("what is a panda?", ["The giant panda is a bear.", "Pandas is a library."])
... # doctest: +SKIP
[Ranked(index=0, score=0.99, passage='The giant panda is a bear.'), ...]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .calibration import convert_scores, model_calibration, sigmoid
from .config import (
    DEFAULT_MODEL,
    SCORER_CONFIG_FIELDS,
    ScorerConfig,
    TemplateLike,
    dtype_from_use_fp16,
)
from .config import check_normalize as _check_normalize
from .fields import as_passages, check_query, pair_texts, passage_texts, passage_to_text
from .fusion import FusionConfig
from .ranking import Ranked, rank_passages
from .runtime import backends
from .runtime.backends.batches import run_batches
from .runtime.families import FAMILIES, build_encoder, build_runner, check_family_options
from .runtime.loading import LoadedModel, load_cross_encoder
from .score_cache import ScoreCache, pair_key
from .tokenization import PairEncoder

if TYPE_CHECKING:
    import torch

    from .runtime.backends import Runner

__all__ = ["DEFAULT_MODEL", "CrossEncoderScorer", "Ranked", "TemplateLike", "sigmoid"]

logger = logging.getLogger(__name__)

#: Default pairs per forward pass on CPU and on an accelerator (``batch_size=None``).
CPU_BATCH_SIZE = 8
ACCELERATOR_BATCH_SIZE = 32


def _is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


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
        normalize: ``True``: sigmoid scores in [0, 1]; ``False``: raw logits; ``"calibrated"``:
            probabilities of relevance from the folder's ``reranker_calibration.json``
            (:mod:`~bge_rerank_plugins.calibration`; loaded when present, required for this).
        template: how records become passage text: a format string such as
            ``"{title}\\n{text}"``, a list of field names, or a :class:`PassageTemplate`.
        cache_size: keep up to this many raw scores in an LRU cache keyed by model, max_length
            and text (0 disables it).
        show_progress_bar: ``None`` shows a bar for calls of more than 2,000 pairs.
        revision, trust_remote_code: passed to ``from_pretrained``; remote code is off unless
            asked for.
        backend: what runs each batch: ``"torch"`` (default), ``"onnx"``, ``"onnx-int8"`` or
            ``"torch-int8"``. Whether each is exact, CPU only or needs an extra, and what it is
            good for, is in :data:`bge_rerank_plugins.runtime.backends.REGISTRY`.
        family, instruction, cutoff_layer: how the model is loaded and scored, the causal
            families' task text, a layer-wise reranker's layer: :class:`ScorerConfig`.
        runner: replaces the backend's runner: any callable that takes one padded batch
            (``input_ids``, ``attention_mask`` and maybe ``token_type_ids`` tensors) and
            returns its logits (:class:`~bge_rerank_plugins.runtime.backends.Runner`). This
            is the seam for tests and instrumentation, as httpx's ``transport=``: wrap
            ``CrossEncoderScorer(model).runner`` to see or change every forward pass.

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
        normalize: bool | str = True,
        template: TemplateLike = None,
        cache_size: int = 0,
        show_progress_bar: bool | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        backend: str = "torch",
        family: str = "auto",
        instruction: str | None = None,
        cutoff_layer: int | None = None,
        runner: Runner | None = None,
    ) -> None:
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
            family=family,
            instruction=instruction,
            cutoff_layer=cutoff_layer,
        )
        #: The options this scorer was built with (a frozen :class:`ScorerConfig`).
        self.config = config
        spec = backends.get(config.backend)
        self._loaded: LoadedModel = load_cross_encoder(
            config.model,
            device=config.device,
            dtype=config.dtype,
            revision=config.revision,
            trust_remote_code=config.trust_remote_code,
            family=config.family,
            # Backends that run a copy of their own leave the torch weights on disk.
            load_weights=spec.needs_torch_weights,
        )
        self.model_name = config.model
        self.max_length = config.max_length
        self.query_max_length = config.query_max_length
        self._family = FAMILIES[self._loaded.family]
        self._family.check(self._loaded.config, self.model_name)
        check_family_options(self._family, config)  # family="auto" is known only now
        #: How this scorer tokenizes pairs (it carries the model's tokenizer lock).
        self.encoder: PairEncoder = build_encoder(self._family, self._loaded, config)
        batch_size = config.batch_size
        if batch_size is None:
            batch_size = CPU_BATCH_SIZE if self._loaded.device == "cpu" else ACCELERATOR_BATCH_SIZE
        self.batch_size = batch_size
        self.token_budget = config.token_budget
        self.normalize = config.normalize
        #: The model folder's calibration file (``None`` without one).
        self.calibration = model_calibration(
            self._loaded.source, config.revision, config.normalize, config.model
        )
        self.template = config.template
        self.show_progress_bar = show_progress_bar
        self.cache = ScoreCache(config.cache_size) if config.cache_size else None
        self.backend = config.backend
        if runner is not None and not callable(runner):
            raise TypeError(f"runner must be a callable (tensors -> logits), got {runner!r}")
        #: What runs each padded batch: ``runner=`` if given, else the backend's runner.
        self.runner: Runner = (
            runner if runner is not None else build_runner(self._family, spec, self._loaded, config)
        )

    @classmethod
    def from_config(
        cls,
        config: ScorerConfig,
        *,
        show_progress_bar: bool | None = None,
        runner: Runner | None = None,
    ) -> CrossEncoderScorer:
        """The scorer that ``config`` describes.

        ``show_progress_bar`` and ``runner`` are not part of the config: the one changes no
        score and is a choice of the process that scores (a terminal, a server, a Ray worker),
        the other is a test seam (see the class).

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
            runner=runner,
        )

    # ----------------------------------------------------------------- properties
    @property
    def model(self) -> Any:
        """The underlying ``transformers`` model (shared with other scorers on the same model).

        For BERT, RoBERTa and XLM-RoBERTa classifiers its last layer computes the first token
        only (the one the classification head reads), so ``logits`` are exact but the last
        hidden state has length 1 (:mod:`bge_rerank_plugins.runtime.first_token`). With a backend
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
        are errors, never a silently wrong result: see :meth:`passage_texts` and
        :class:`~bge_rerank_plugins.errors.NonFiniteScoreError`.

        >>> scorer.score("capital of China", ["Beijing is the capital.", "Capital gains tax."])
        ... # doctest: +SKIP
        [0.97, 0.02]
        """
        check_query(query)
        texts = self.passage_texts(passages)
        return self._score_texts([(query, t) for t in texts], normalize)

    def score_pairs(
        self, pairs: Iterable[Sequence[Any]], *, normalize: bool | None = None
    ) -> list[float]:
        """Scores of (query, passage) pairs, in input order."""
        return self._score_texts(pair_texts(pairs, self.template), normalize)

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
        queries = as_passages(queries, "queries")
        candidates = as_passages(candidates, "candidates")
        if len(queries) != len(candidates):
            raise ValueError(
                f"queries and candidates must have the same length "
                f"({len(queries)} != {len(candidates)}): one candidate list per query."
            )
        items: list[tuple[str, str]] = []
        sizes: list[int] = []
        for qi, (query, passages) in enumerate(zip(queries, candidates)):
            check_query(query, f"queries[{qi}]")
            texts = self.passage_texts(passages, prefix=f"candidates[{qi}]")
            items.extend((query, t) for t in texts)
            sizes.append(len(texts))
        flat = iter(self._score_texts(items, normalize, show_progress_bar))
        return [[next(flat) for _ in range(size)] for size in sizes]

    def rank(
        self,
        query: str,
        passages: Iterable[Any],
        top_k: int | None = None,
        *,
        normalize: bool | str | None = None,
        first_stage_scores: Sequence[float] | None = None,
        fusion: FusionConfig | None = None,
        timeout: float | None = None,
    ) -> list[Ranked]:
        """Passages sorted best first as ``Ranked(index, score, passage)``; ties keep input order.

        ``fusion`` fuses the raw scores with ``first_stage_scores`` (or, without them, the
        input order); ``timeout`` (seconds) falls back to the first-stage order, flagged
        ``reranked=False``, instead of running late (:mod:`bge_rerank_plugins.ranking`).

        >>> scorer.rank("q", ["a", "b", "c"], top_k=2)  # doctest: +SKIP
        [Ranked(index=2, score=0.9, passage='c'), Ranked(index=0, score=0.4, passage='a')]
        """
        return rank_passages(
            self, query, passages, top_k, normalize=normalize,
            first_stage_scores=first_stage_scores, fusion=fusion, timeout=timeout,
        )  # fmt: skip

    def passage_texts(self, passages: Iterable[Any], prefix: str = "passages") -> list[str]:
        """The text scored for each passage; errors name ``prefix[index]``. A record with no data
        to score is a ValueError; blank records are scored as empty text, counted in one warning
        (:func:`bge_rerank_plugins.fields.passage_texts`)."""
        return passage_texts(passages, self.template, prefix)

    def resolve_max_length(self, pair_lengths: Sequence[int]) -> int:
        """The max_length used for pairs of these (untruncated) token lengths."""
        return self.encoder.resolve_max_length(pair_lengths)

    # ----------------------------------------------------------------- internals
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
        # A fixed max_length is known before tokenizing, so cache hits skip the tokenizer (the
        # bulk of a fully cached call); "auto" depends on the token lengths of the call.
        encoded = self.encoder.encode(items) if self.max_length == "auto" else None
        max_length = encoded["max_length"] if encoded else self.resolve_max_length(())
        raw: list[float | None] = [None] * len(items)
        if self.cache is not None:
            from .runtime.families import RUNNER_SCORE_SETTINGS as SETTINGS  # layer, compression

            runner = tuple(getattr(self.runner, n, None) for n in SETTINGS)  # settable later
            model_key = (self._loaded.name, str(self.dtype), self.backend, self.config.instruction)
            keys = [pair_key((*model_key, *runner), max_length, q, p) for q, p in items]
            raw = [self.cache.get(key) for key in keys]
        todo = [i for i, value in enumerate(raw) if value is None]
        if todo:
            rows = todo if encoded is not None else list(range(len(todo)))
            if encoded is None:
                encoded = self.encoder.encode([items[i] for i in todo])
            progress = self.show_progress_bar if show_progress_bar is None else show_progress_bar
            types = encoded["token_type_ids"]
            scores = run_batches(
                self.runner,
                self._family.score,
                [encoded["input_ids"][i] for i in rows],
                [types[i] for i in rows] if types else None,
                batch_size=self.batch_size,
                token_budget=self.token_budget,
                pad_id=self.tokenizer.pad_token_id,
                device=self.device,
                lock=self._loaded.lock,
                progress=len(rows) > 2000 if progress is None else progress,
                model_name=self.model_name,
                backend=self.backend,
            )
            for i, value in zip(todo, scores):
                raw[i] = value
                if self.cache is not None:
                    self.cache.put(keys[i], value)
        mode = self.normalize if normalize is None else normalize
        return convert_scores(raw, mode, self.calibration, self.model_name)  # type: ignore[arg-type]
