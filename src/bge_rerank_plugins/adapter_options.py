"""Options shared by the framework adapters, and the one place that turns them into a scorer.

:class:`ScorerOptions` holds what it takes to load a :class:`~bge_rerank_plugins.CrossEncoderScorer`
(the fields of :class:`~bge_rerank_plugins.config.ScorerConfig`: model, device, dtype, lengths,
batch size, normalize, cache, backend...) or an existing ``scorer`` to share.
:class:`RerankOptions` adds what a reranking step decides (``top_n``, ``score_threshold``, a
``template`` over text and metadata, and ``fusion`` / ``first_stage`` / ``timeout``:
:mod:`~bge_rerank_plugins.adapter_ranking`). The LlamaIndex postprocessor
(:class:`~bge_rerank_plugins.llama_index.BGEReranker`) and the LangChain classes
(:class:`~bge_rerank_plugins.langchain.BGERerankCompressor`,
:class:`~bge_rerank_plugins.langchain.BGECrossEncoder`) inherit these pydantic fields, so an option
means the same thing, with the same default, in both frameworks.

The scorer is created lazily, on first use, so an adapter with a Hub id can be built and
serialized without loading the model. This module needs pydantic (which both frameworks install);
``import bge_rerank_plugins`` does not import it.

>>> from bge_rerank_plugins.adapter_options import RerankOptions
>>> options = RerankOptions(top_n=2, template="{title}\\n{text}")
>>> options.record_text("Body text.", {"title": "A title"})
'A title\\nBody text.'
>>> options.model
'BAAI/bge-reranker-v2-m3'
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    field_validator,
    model_validator,
)

from . import adapter_ranking as reranking
from . import adapter_scoring as scoring
from .config import DEFAULT_MODEL, SCORER_CONFIG_FIELDS, ScorerConfig, dtype_from_use_fp16
from .fields import PassageTemplate
from .fusion import FusionConfig
from .runtime.backends import BACKENDS, describe
from .scorer import CrossEncoderScorer

__all__ = ["LOADING_OPTIONS", "RerankOptions", "ScorerOptions", "build_scorer"]

logger = logging.getLogger(__name__)

# ScorerConfig fields an adapter applies itself, not passed to the scorer: RerankOptions.template
# renders a node's or document's text and metadata, so the scorer only ever sees strings.
_APPLIED_BY_THE_ADAPTER = ("template",)

#: Options that only matter when the adapter loads its own model (not with ``scorer=``): every
#: ScorerConfig field but ``model`` (checked against the shared scorer's), ``normalize`` (applied
#: per call) and ``template``, plus ``use_fp16``.
_PER_ADAPTER = ("model", "normalize", *_APPLIED_BY_THE_ADAPTER)
LOADING_OPTIONS = ("use_fp16", *(name for name in SCORER_CONFIG_FIELDS if name not in _PER_ADAPTER))

# The backend names as a Literal built from the one list (the JSON schema lists them).
BackendName = Literal[BACKENDS]  # type: ignore[valid-type]

# Two threads asking one adapter for its scorer at once must not load it twice.
_build_lock = threading.Lock()


def build_scorer(options: ScorerOptions) -> CrossEncoderScorer:
    """Load the :class:`CrossEncoderScorer` that ``options`` describe (a remote one for a URL).

    The weights come from the process-wide model cache, so adapters on the same model, device
    and precision share one copy even when each builds its own scorer.

    Args:
        options: the adapter (or a bare :class:`ScorerOptions`) whose fields say what to load.

    Returns:
        A new scorer (its weights possibly shared with other scorers).
    """
    logger.debug("Creating the scorer for model=%r", options.model)
    if scoring.is_url(options.model):
        return scoring.remote_scorer(options.model)
    return CrossEncoderScorer.from_config(options.scorer_config())


class ScorerOptions(BaseModel):
    """Which cross-encoder to run and how: the fields every adapter shares.

    The fields are those of :class:`~bge_rerank_plugins.config.ScorerConfig`, with the same
    names, defaults and checks (plus ``use_fp16``, FlagEmbedding's spelling of
    ``dtype="float16"``). Pass ``scorer=`` to reuse an already loaded
    :class:`CrossEncoderScorer` (one model for LlamaIndex and LangChain in the same process);
    the loading options are then the scorer's own, and setting them as well is an error.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    #: ScorerConfig fields these options do not expose, each for a reason (checked by
    #: tests/test_config.py): ``template`` -- scoring (query, passage) text pairs, as LangChain's
    #: ``CrossEncoderReranker`` does, has no records to render; the reranking adapters add it
    #: (:class:`RerankOptions`), and a scorer built with ``template=`` can be shared instead.
    SCORER_CONFIG_EXCLUDED: ClassVar[tuple[str, ...]] = ("template",)

    model: str = Field(
        default=DEFAULT_MODEL,
        description="Hugging Face Hub id or local directory of the cross-encoder.",
    )
    device: str | None = Field(
        default=None,
        description="Device such as 'cpu', 'cuda', 'cuda:1' or 'mps'; None picks the best one.",
    )
    dtype: str = Field(
        default="auto",
        description="Precision: 'auto' (float16 on CUDA, float32 elsewhere), 'float32', "
        "'float16' or 'bfloat16' (half precision on CPUs that have it).",
    )
    use_fp16: StrictBool | None = Field(
        default=None,
        description="FlagEmbedding's spelling of dtype='float16' (False: float32); None leaves "
        "the choice to dtype.",
    )
    batch_size: int | None = Field(
        default=None, ge=1, description="Most pairs per forward pass (None: 8 on CPU, 32 on GPU)."
    )
    max_length: Union[Annotated[int, Field(ge=8)], Literal["auto"], None] = Field(  # noqa: UP007
        default=None,
        description="Most tokens per (query, passage) pair; None is the model's limit (at most "
        "512), 'auto' fits each call's lengths. The passage is truncated, never the query.",
    )
    query_max_length: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens kept of the query (None: half of max_length); the passage is "
        "what gets truncated.",
    )
    token_budget: int | None = Field(
        default=None,
        ge=1,
        description="Most padded tokens per forward pass (None: batch_size times the longest "
        "pair).",
    )
    normalize: StrictBool | Literal["calibrated"] = Field(
        default=True,
        description="True: sigmoid scores in [0, 1]; False: raw logits; 'calibrated': "
        "probabilities of relevance from the model folder's reranker_calibration.json.",
    )
    cache_size: int = Field(
        default=0,
        ge=0,
        description="Raw scores kept in an LRU cache keyed by model and text (0: no cache).",
    )
    backend: BackendName = Field(
        default="torch",
        # Written from the backend registry, the one place that describes each backend.
        description=f"What runs each batch; one of: {describe()}.",
    )
    revision: str | None = Field(
        default=None, description="Hub revision (branch, tag or commit) of the model."
    )
    trust_remote_code: StrictBool = Field(
        default=False, description="Allow custom model code from the Hub."
    )
    family: str = Field(
        default="auto",
        description="How the model is loaded and scored: 'auto' (from its files) or a family "
        "name (docs/families.md).",
    )
    instruction: str | None = Field(
        default=None,
        description="Task text of the causal-LM families (None: the family's default).",
    )
    cutoff_layer: int | None = Field(
        default=None, strict=True, description="Layer a layer-wise reranker reads (None: top)."
    )
    scorer: Any = Field(
        default=None,
        exclude=True,
        repr=False,
        description="A scorer to share instead of loading a model: a CrossEncoderScorer or "
        "any object with its score/rank API, such as a RemoteScorer (not serialized).",
    )
    _lazy_scorer: Any = PrivateAttr(default=None)
    _scorer_api = field_validator("scorer")(scoring.check_scorer)

    _model_as_str = field_validator("model", mode="before")(scoring.model_as_str)
    _no_bool_counts = field_validator(
        "batch_size", "max_length", "query_max_length", "token_budget", "cache_size", mode="before"
    )(scoring.no_bool_count)

    @model_validator(mode="after")
    def _check_scorer_options(self) -> ScorerOptions:
        # The scorer's own checks, now rather than at the first query (nothing is loaded).
        if self.scorer is None:
            try:
                self.scorer_config()
            except TypeError as error:
                raise ValueError(str(error)) from None
        return self

    @model_validator(mode="after")
    def _adopt_shared_scorer(self) -> ScorerOptions:
        if self.scorer is None and not scoring.is_url(self.model):
            return self
        clashing = scoring.loading_clashes(self, LOADING_OPTIONS)
        if clashing:
            raise ValueError(
                f"{', '.join(clashing)}: these loading options belong to the scorer passed as "
                "scorer= (or runs on the server model= names); set them when building that "
                "scorer, or drop scorer= to let this adapter load its own."
            )
        shared = getattr(self.scorer, "model_name", None)
        if shared is None:  # a model URL, or a scorer that does not say
            return self
        if "model" in self.model_fields_set and self.model != shared:
            raise ValueError(
                f"model={self.model!r} differs from the shared scorer's model "
                f"{shared!r}; pass only scorer=, or only model=."
            )
        # Record what is really used, so events and serialized settings name the right model.
        self.__dict__["model"] = shared
        if "normalize" not in self.model_fields_set:
            self.__dict__["normalize"] = getattr(self.scorer, "normalize", self.normalize)
        return self

    # normalize="calibrated" / fusion="auto" without the calibration file: refused now.
    _calibration_present = model_validator(mode="after")(reranking.check_calibration)

    def __getstate__(self) -> dict[Any, Any]:
        """Pickle the options, not the model: the restored adapter loads ``model`` on first use.

        A scorer holds a loaded network and locks; it is process-local and left out (a shared
        ``scorer=`` too).
        """
        if self.scorer is None and self._lazy_scorer is None:
            return super().__getstate__()
        bare = copy.copy(self)
        bare.__dict__["scorer"] = None
        bare._lazy_scorer = None
        return bare.__getstate__()

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> ScorerOptions:
        """Deep copies share the scorer (a loaded model is a resource, not a value)."""
        memo = {} if memo is None else memo
        for scorer in (self.scorer, self._lazy_scorer):
            if scorer is not None:
                memo[id(scorer)] = scorer
        return super().__deepcopy__(memo)

    def scorer_config(self) -> ScorerConfig:
        """The :class:`~bge_rerank_plugins.config.ScorerConfig` of the scorer in use.

        With ``scorer=`` it is that scorer's config; otherwise the one these options describe
        (what :func:`build_scorer` loads; ``use_fp16`` folded into ``dtype``).

        >>> ScorerOptions(dtype="bfloat16", batch_size=16).scorer_config().dtype
        'bfloat16'
        """
        if isinstance(getattr(self.scorer, "config", None), ScorerConfig):
            return self.scorer.config
        fields = type(self).model_fields
        values = {
            name: getattr(self, name)
            for name in SCORER_CONFIG_FIELDS
            if name in fields and name not in _APPLIED_BY_THE_ADAPTER
        }
        values["dtype"] = dtype_from_use_fp16(self.dtype, self.use_fp16)
        return ScorerConfig(**values)

    def get_scorer(self) -> CrossEncoderScorer:
        """The scorer in use: the shared one, or the one loaded on first call.

        >>> shared = reranker.get_scorer()  # doctest: +SKIP
        >>> BGERerankCompressor(scorer=shared, top_n=3)  # doctest: +SKIP
        """
        if self.scorer is not None:
            return self.scorer
        if self._lazy_scorer is None:
            with _build_lock:
                if self._lazy_scorer is None:
                    self._lazy_scorer = build_scorer(self)
        return self._lazy_scorer


class RerankOptions(ScorerOptions):
    """:class:`ScorerOptions` plus what a reranking step keeps and what text it scores."""

    #: Every ScorerConfig field is exposed (``template`` is applied by the adapter itself).
    SCORER_CONFIG_EXCLUDED: ClassVar[tuple[str, ...]] = ()
    #: The values ``first_stage`` may take here (``"metadata:"`` is followed by a key).
    FIRST_STAGE_SOURCES: ClassVar[tuple[str, ...]] = ("score", "rank", "metadata:")

    top_n: int | None = Field(
        default=3,
        ge=1,
        description="Number of results to return, best first; None keeps every result that "
        "passes score_threshold.",
    )
    score_threshold: float | None = Field(
        default=None,
        description="Drop results whose reranker score is below this (in [0, 1] unless "
        "normalize=False; a probability with 'calibrated'); never applied to results that "
        "were not reranked (timeout).",
    )
    fusion: FusionConfig | Literal["auto"] | None = Field(
        default=None,
        description="Fuse the reranker's scores with the first stage's: a FusionConfig or a "
        "dict of its fields (method 'blend'/'rrf', weight, rrf_k, normalization), or 'auto' "
        "(the fusion saved in the model's calibration file); None: the reranker's order.",
    )
    first_stage: str = Field(
        default="score",
        description="Where each candidate's first-stage score comes from: 'score' (the "
        "retriever's score), 'metadata:<key>' or 'rank' (the incoming order).",
    )
    timeout: float | None = Field(
        default=None,
        description="Seconds; when reranking would take longer, the first-stage order is "
        "returned, marked reranked=False (None: no deadline).",
    )
    template: str | list[str] | None = Field(
        default=None,
        description="Text to score built from the text and metadata fields: a format string "
        "such as '{title}\\n{section}\\n{text}' or a list of field names joined by newlines. "
        "'text' is the node or document text.",
    )
    _passage_template: PassageTemplate | None = PrivateAttr(default=None)

    _top_n_not_bool = field_validator("top_n", mode="before", check_fields=False)(
        scoring.top_n_not_bool
    )
    _finite_threshold = field_validator("score_threshold")(scoring.finite_threshold)
    _threshold_in_score_range = model_validator(mode="after")(scoring.threshold_in_range)
    _template_spec = field_validator("template", mode="before")(scoring.template_spec)
    _fusion = field_validator("fusion", mode="before")(reranking.check_fusion)
    _first_stage = field_validator("first_stage")(reranking.check_first_stage)
    _timeout = field_validator("timeout", mode="before")(reranking.check_timeout_option)

    @model_validator(mode="after")
    def _compile_template(self) -> RerankOptions:
        if self.template is not None:
            try:
                self._passage_template = PassageTemplate(self.template)
            except ValueError as error:
                raise ValueError(str(error)) from None
        return self

    def record_text(self, text: str, metadata: Mapping[str, Any], index: int | None = None) -> str:
        """The text scored for a record with this main ``text`` and ``metadata``.

        Without a template it is ``text``; with one it is the template rendered over
        ``{**metadata, "text": text}`` (missing or blank fields are skipped).

        Raises:
            ValueError: the record has none of the template's fields, so it would be scored
                as empty text (``index`` names its position in the message).
        """
        if self._passage_template is None:
            return text
        record = {**metadata, "text": text}
        if not self._passage_template.present_fields(record):
            raise scoring.no_template_fields(self.template, self._passage_template, metadata, index)
        return self._passage_template.render(record)

    def rank_texts(
        self,
        query: str,
        texts: Sequence[str],
        top_n: Any = ...,
        *,
        retrieval_scores: Sequence[Any] | None = None,
        metadatas: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[reranking.Hit]:
        """Rank ``texts`` for ``query``: :class:`~.adapter_ranking.Hit` ``(index, score,
        details)``, best first; ties keep input order. ``score_threshold``, then ``top_n``
        (``...``: the field's) apply. ``retrieval_scores`` / ``metadatas`` (one per text) are
        where ``first_stage`` reads from, with ``fusion`` or ``timeout`` set
        (:mod:`~bge_rerank_plugins.adapter_ranking`).
        """
        top_n = scoring.rank_call(query, top_n, self.top_n)
        return reranking.rerank(self, query, list(texts), top_n, retrieval_scores, metadatas)

    async def arank_texts(
        self,
        query: str,
        texts: Sequence[str],
        top_n: Any = ...,
        *,
        retrieval_scores: Sequence[Any] | None = None,
        metadatas: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[reranking.Hit]:
        """Async :meth:`rank_texts`: awaits the scorer's ``arank``/``ascore``, or runs it in a
        thread."""
        top_n = scoring.rank_call(query, top_n, self.top_n)
        return await reranking.arerank(self, query, list(texts), top_n, retrieval_scores, metadatas)
