"""How the reranking adapters fuse with the first stage and keep a deadline.

The reranking adapters (:class:`~bge_rerank_plugins.llama_index.BGEReranker`,
:class:`~bge_rerank_plugins.langchain.BGERerankCompressor`,
:class:`~bge_rerank_plugins.langchain.BGERerankRetriever`) take three options for it:

* ``fusion``: ``None`` (the reranker's order), a :class:`~bge_rerank_plugins.fusion.FusionConfig`,
  a dict of its fields, or ``"auto"`` (the fusion fitted and saved in the model folder's
  ``reranker_calibration.json``; an error when the file has none).
* ``first_stage``: where each candidate's first-stage score comes from: ``"score"`` (LlamaIndex's
  ``NodeWithScore.score``), ``"metadata:<key>"`` (a metadata entry) or ``"rank"`` (only the
  incoming order). A candidate without a finite score there makes the whole call use the
  incoming order (one warning per adapter class and source; then debug messages).
* ``timeout``: seconds, or ``None``. When scoring would run past it, the scorer returns the
  first-stage order and the adapter returns that (its ``top_n``), marked ``reranked=False``,
  with ``score_threshold`` not applied; it never raises for it.

With either ``fusion`` or ``timeout`` set, the adapter ranks through the scorer's ``rank`` (or
an async scorer's ``arank``) and every result says which score is which: :data:`SCORE_KEYS` in
its metadata, from :func:`details`. ``score_threshold`` then compares with ``reranker_score``
(in ``normalize`` mode: a probability with ``"calibrated"``), never the fused score, whose scale
depends on the query's candidate list. Without them, scoring is as before (``score`` /
``ascore``, no extra metadata).

>>> from bge_rerank_plugins.ranking import Ranked
>>> hits = cut([Ranked(1, 0.9, "b"), Ranked(0, 0.2, "a")], top_n=None, score_threshold=0.5)
>>> [(h.index, h.score, h.details["reranked"]) for h in hits]
[(1, 0.9, True)]
>>> first_stage_scores("metadata:bm25", None, [{"bm25": 7.5}, {"bm25": 3}])
[7.5, 3.0]
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from . import adapter_scoring as scoring
from .calibration import CalibrationMissingError, find_calibration
from .fusion import FusionConfig
from .ranking import Ranked, check_timeout

__all__ = [
    "SCORE_KEYS",
    "Hit",
    "arerank",
    "check_calibration",
    "check_first_stage",
    "check_fusion",
    "check_timeout_option",
    "cut",
    "details",
    "first_stage_scores",
    "rerank",
    "resolve_fusion",
]

logger = logging.getLogger(__name__)

#: The metadata keys that say which score is which (with ``fusion`` or ``timeout`` set).
SCORE_KEYS = ("reranker_score", "first_stage_score", "fused_score", "reranked")
_RANK_OPTIONS = ("first_stage_scores", "fusion", "timeout")
_METADATA = "metadata:"
_warned: set[tuple[str, str]] = set()


class Hit(NamedTuple):
    """One result of an adapter's ranking: input ``index``, the ``score`` it is sorted by, and
    ``details`` (the :data:`SCORE_KEYS` values; ``None`` when scored without ``rank``)."""

    index: int
    score: float
    details: dict[str, Any] | None = None


def check_fusion(value: Any) -> Any:
    """``fusion`` as stored: ``None``, ``"auto"`` or a FusionConfig (a dict becomes one)."""
    if value is None or value == "auto" or isinstance(value, FusionConfig):
        return value
    if isinstance(value, Mapping):
        try:
            return FusionConfig.from_dict(dict(value))
        except TypeError as error:
            raise ValueError(f"fusion: {error}") from None
    raise ValueError(
        f"fusion must be None, 'auto' (the fusion saved in the model's calibration file), a "
        f"bge_rerank_plugins.fusion.FusionConfig or a dict of its fields (method, weight, "
        f"rrf_k, normalization), got {type(value).__name__} {value!r}"
    )


def check_first_stage(cls: type, value: Any) -> Any:
    """``first_stage``: one of ``cls.FIRST_STAGE_SOURCES`` (``"metadata:"`` takes a key)."""
    sources = cls.FIRST_STAGE_SOURCES  # type: ignore[attr-defined]
    if isinstance(value, str):
        if value in sources and value != _METADATA:
            return value
        if value.startswith(_METADATA) and _METADATA in sources and value[len(_METADATA) :]:
            return value
    choices = ", ".join(repr(s + "<key>" if s == _METADATA else s) for s in sources)
    raise ValueError(
        f"first_stage must be one of {choices} (where each candidate's first-stage score "
        f"comes from), got {value!r}"
    )


def check_timeout_option(value: Any) -> float | None:
    """``timeout``: ``None`` or a finite number of seconds > 0 (a bad type is a ValueError
    here, as pydantic reports it)."""
    try:
        return check_timeout(value)
    except TypeError as error:
        raise ValueError(str(error)) from None


def check_calibration(options: Any) -> Any:
    """Refuse, at construction, ``normalize="calibrated"`` / ``fusion="auto"`` for a scorer or
    local model folder known to lack the calibration file (a Hub id is checked on first use)."""
    calibrated = options.normalize == "calibrated"
    auto = getattr(options, "fusion", None) == "auto"
    if not (calibrated or auto):
        return options
    if options.scorer is not None:
        calibration = getattr(options.scorer, "calibration", None)
    elif scoring.is_url(options.model):
        calibration = None  # a server does not expose the model folder's file
    elif Path(options.model).is_dir():
        calibration = find_calibration(options.model)
    else:
        return options
    if calibrated and calibration is None:
        raise ValueError(_missing("normalize='calibrated'", options.model, "a calibration"))
    if auto and (calibration is None or calibration.fusion is None):
        raise ValueError(_missing("fusion='auto'", options.model, "a fitted fusion"))
    return options


def _missing(option: str, model: str, what: str) -> str:
    return (
        f"{option} needs {what} in the model's reranker_calibration.json, and model={model!r} "
        "has none (a remote scorer never has one); fit it on labelled data with `bge-rerank "
        "fit --model <folder> --data <beir folder>` (bge_rerank_plugins.evaluation.fit_fusion), "
        "or pass "
        + ("normalize=True / False." if "normalize" in option else "fusion=FusionConfig(...).")
    )


def resolve_fusion(fusion: Any, scorer: Any) -> FusionConfig | None:
    """The FusionConfig to use: ``fusion`` itself, or for ``"auto"`` the scorer's fitted one.

    Raises:
        CalibrationMissingError: ``"auto"`` and the scorer's model has no fitted fusion.
    """
    if fusion != "auto":
        return fusion
    calibration = getattr(scorer, "calibration", None)
    if calibration is None or calibration.fusion is None:
        model = getattr(scorer, "model_name", type(scorer).__name__)
        raise CalibrationMissingError(_missing("fusion='auto'", model, "a fitted fusion"))
    return calibration.fusion


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def first_stage_scores(
    source: str,
    retrieval_scores: Sequence[Any] | None,
    metadatas: Sequence[Any] | None,
    who: str = "adapter",
) -> list[float] | None:
    """Each candidate's first-stage score read from ``source``, or ``None`` (the incoming order
    is the first stage's): for ``"rank"``, or when a candidate has no finite score there."""
    if source == "rank":
        return None
    if source == "score":
        values = list(retrieval_scores or [])
    else:
        key = source[len(_METADATA) :]
        values = [m.get(key) if isinstance(m, Mapping) else None for m in metadatas or []]
    missing = [i for i, value in enumerate(values) if not _finite(value)]
    if not missing:
        return [float(v) for v in values]
    where = "score" if source == "score" else f"metadata[{source[len(_METADATA) :]!r}]"
    message = (
        "%s: %d of %d candidates have no finite first-stage %s (first: candidate %d); using the "
        "incoming order as the first stage's (first_stage='rank') for this call."
    )
    args = (who, len(missing), len(values), where, missing[0])
    warned_key = (who, source)
    if warned_key in _warned:
        logger.debug(message, *args)
    else:
        _warned.add(warned_key)
        logger.warning(message + " Further cases are logged at debug level.", *args)
    return None


def details(ranked: Ranked) -> dict[str, Any]:
    """The :data:`SCORE_KEYS` of one ranked passage, for a result's metadata."""
    return {key: getattr(ranked, key) for key in SCORE_KEYS}


def cut(ranked: Sequence[Ranked], top_n: int | None, score_threshold: float | None) -> list[Hit]:
    """Hits in ``ranked``'s order: ``score_threshold`` on the reranker's score (not applied to
    a first-stage fallback), then the first ``top_n``."""
    kept = list(ranked)
    if score_threshold is not None:
        kept = [
            r
            for r in kept
            if not r.reranked
            or (r.reranker_score is not None and r.reranker_score >= score_threshold)
        ]
    if top_n is not None:
        kept = kept[:top_n]
    return [Hit(r.index, float(r.score), details(r)) for r in kept]


def uses_rank(options: Any) -> bool:
    """Whether ``options`` rank through the scorer's ``rank`` (``fusion`` or ``timeout`` set)."""
    return options.fusion is not None or options.timeout is not None


def _takes_rank_options(method: Any) -> bool:
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):  # a builtin or C method: assume the current API
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return set(_RANK_OPTIONS) <= set(params)


def _rank_method(scorer: Any, name: str = "rank") -> Any:
    method = getattr(scorer, name)
    if not _takes_rank_options(method):
        raise TypeError(
            f"fusion= and timeout= need the scorer's {name}(query, passages, *, "
            "first_stage_scores=, fusion=, timeout=), as CrossEncoderScorer and RemoteScorer "
            f"have; the {type(scorer).__name__} passed as scorer= has an older {name}(). Drop "
            "fusion and timeout, or pass a CrossEncoderScorer or RemoteScorer."
        )
    return method


def _rank_kwargs(options: Any, scorer: Any, first: list[float] | None) -> dict[str, Any]:
    return {
        "normalize": options.normalize,
        "first_stage_scores": first,
        "fusion": resolve_fusion(options.fusion, scorer),
        "timeout": options.timeout,
    }


def _finish(options: Any, ranked: list[Ranked], top_n: int | None) -> list[Hit]:
    if ranked and not ranked[0].reranked:
        logger.info(
            "%s: returning the first-stage order (not reranked within timeout=%s s).",
            type(options).__name__,
            options.timeout,
        )
    return cut(ranked, top_n, options.score_threshold)


def rerank(
    options: Any,
    query: str,
    texts: list[str],
    top_n: int | None,
    retrieval_scores: Sequence[Any] | None = None,
    metadatas: Sequence[Any] | None = None,
) -> list[Hit]:
    """Rank ``texts`` for ``query`` as the adapter ``options`` say; hits best first."""
    if not uses_rank(options):
        scores = options.get_scorer().score(query, texts, normalize=options.normalize)
        return [Hit(i, s) for i, s in scoring.best_results(scores, top_n, options.score_threshold)]
    scorer = options.get_scorer()
    rank = _rank_method(scorer)
    first = first_stage_scores(
        options.first_stage, retrieval_scores, metadatas, type(options).__name__
    )
    ranked = rank(query, texts, **_rank_kwargs(options, scorer, first))
    return _finish(options, ranked, top_n)


async def arerank(
    options: Any,
    query: str,
    texts: list[str],
    top_n: int | None,
    retrieval_scores: Sequence[Any] | None = None,
    metadatas: Sequence[Any] | None = None,
) -> list[Hit]:
    """:func:`rerank`, awaited: the scorer's own ``arank``/``ascore`` if it has one (a remote
    scorer), else ``rank``/``score`` in a worker thread (the deadline is kept there too)."""
    if not uses_rank(options):
        scores = await scoring.ascore_texts(options.get_scorer, query, texts, options.normalize)
        return [Hit(i, s) for i, s in scoring.best_results(scores, top_n, options.score_threshold)]
    scorer = await asyncio.to_thread(options.get_scorer)
    first = first_stage_scores(
        options.first_stage, retrieval_scores, metadatas, type(options).__name__
    )
    kwargs = _rank_kwargs(options, scorer, first)
    arank = getattr(scorer, "arank", None)
    if arank is not None and inspect.iscoroutinefunction(arank):
        ranked = await _rank_method(scorer, "arank")(query, texts, **kwargs)
    else:
        ranked = await asyncio.to_thread(_rank_method(scorer), query, texts, **kwargs)
    return _finish(options, ranked, top_n)
