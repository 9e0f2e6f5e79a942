"""How the framework adapters reach a scorer and cut its results.

An adapter's ``scorer=`` may be any object with the
:class:`~bge_rerank_plugins.CrossEncoderScorer` scoring API -- ``score(query, passages, *,
normalize=None)`` and ``rank(...)`` -- such as a local ``CrossEncoderScorer`` or a
``bge_rerank_plugins.remote.RemoteScorer`` that calls a reranking server. When the object also
has ``ascore`` (a coroutine function with the same arguments), the adapters' async paths await
it; otherwise they run ``score`` in a worker thread, off the event loop. ``model="http://..."``
or ``"https://..."`` means "a RemoteScorer for that URL".

>>> from bge_rerank_plugins.adapter_scoring import best_results, is_url
>>> best_results([0.2, 0.9, 0.5], top_n=2, score_threshold=None)
[(1, 0.9), (2, 0.5)]
>>> is_url("https://rerank.internal:8000"), is_url("BAAI/bge-reranker-v2-m3")
(True, False)
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from .fields import PassageTemplate

__all__ = [
    "SCORER_API",
    "ascore_texts",
    "best_results",
    "check_scorer",
    "check_top_n",
    "finite_threshold",
    "is_url",
    "loading_clashes",
    "model_as_str",
    "no_bool_count",
    "no_template_fields",
    "rank_call",
    "remote_scorer",
    "score_pairs",
    "template_spec",
    "threshold_in_range",
    "top_n_not_bool",
]

logger = logging.getLogger(__name__)

#: The methods an object passed as ``scorer=`` must have.
SCORER_API = ("score", "rank")


def check_scorer(value: Any) -> Any:
    """``value`` if it is ``None`` or has the scorer API; a ValueError naming what is missing."""
    if value is None:
        return None
    missing = [name for name in SCORER_API if not callable(getattr(value, name, None))]
    if missing:
        raise ValueError(
            f"scorer must have the CrossEncoderScorer API (score and rank methods); a "
            f"{type(value).__name__} has no {' or '.join(missing)}. Pass a CrossEncoderScorer, "
            "a bge_rerank_plugins.remote.RemoteScorer, or model='http://host:port' for a "
            "reranking server."
        )
    return value


def model_as_str(value: Any) -> Any:
    """``model`` as given, a path-like one as its string (a before-validator)."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def no_bool_count(value: Any, info: Any) -> Any:
    """Refuse a bool where a count belongs (pydantic would read ``True`` as 1)."""
    if isinstance(value, bool):
        kind = "an int" if info.field_name == "cache_size" else "an int or None"
        raise ValueError(f"{info.field_name} must be {kind}, not a bool ({value!r})")
    return value


def finite_threshold(value: float | None) -> float | None:
    """``score_threshold``: ``None`` or finite (every comparison with NaN is False, so
    ``nan`` would drop every result)."""
    if value is not None and not math.isfinite(value):
        raise ValueError(
            f"score_threshold must be a finite number or None, got {value!r}; it would "
            "drop every result (or keep every one). Use None to keep all results."
        )
    return value


def threshold_in_range(options: Any) -> Any:
    """Refuse a ``score_threshold`` above 1 when the scores are in [0, 1] (after-validator)."""
    if options.normalize and options.score_threshold is not None and options.score_threshold > 1:
        raise ValueError(
            f"score_threshold={options.score_threshold} is above 1, but normalize="
            f"{options.normalize!r} gives scores in [0, 1], so every result would be dropped. "
            "Pass a threshold in [0, 1], or normalize=False to compare with raw logits."
        )
    return options


def top_n_not_bool(value: Any) -> Any:
    """Refuse ``top_n=True`` (pydantic would read it as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"top_n must be a positive int or None, not a bool ({value!r})")
    return value


def no_template_fields(
    template: Any, compiled: PassageTemplate, metadata: Any, index: int | None
) -> ValueError:
    """The error for a record that has none of ``template``'s fields."""
    where = "a record" if index is None else f"record {index}"
    return ValueError(
        f"template={template!r}: {where} has none of its fields "
        f"{', '.join(compiled.fields)} (its metadata has "
        f"{', '.join(map(str, metadata)) or 'no keys'}), so it would be scored as "
        "empty text. Fix the field names, or include 'text' (the node or document "
        "text) in the template."
    )


def template_spec(value: Any) -> Any:
    """``template`` as a format string or a list of field names (a before-validator)."""
    if isinstance(value, PassageTemplate):
        if isinstance(value.template, str):
            return value.template
        separator = value.separator.replace("{", "{{").replace("}", "}}")
        return separator.join("{" + name + "}" for name in value.template)
    if isinstance(value, tuple):
        return list(value)
    return value


def is_url(model: Any) -> bool:
    """Whether ``model`` names a reranking server (``http://`` or ``https://``), not a model."""
    return isinstance(model, str) and model.lower().startswith(("http://", "https://"))


def remote_scorer(url: str) -> Any:
    """A ``bge_rerank_plugins.remote.RemoteScorer`` for ``url`` (imported on first use)."""
    try:
        module = importlib.import_module(f"{__package__}.remote")
    except ImportError as error:
        raise ImportError(
            f"model={url!r} is a URL, which means a remote scorer, but "
            f"bge_rerank_plugins.remote could not be imported ({error}). Install the "
            "package's 'serve' extra (pip install 'bge-rerank-plugins[serve]'), or pass "
            "scorer= an object with score/rank methods."
        ) from error
    logger.debug("Using a remote scorer at %s", url)
    return module.RemoteScorer(url)


def loading_clashes(options: Any, names: Sequence[str]) -> list[str]:
    """The loading options set on ``options`` although its scorer is not its own to load.

    With ``scorer=``, every one given counts. With a model URL, only those that differ from the
    default: serialized settings (``model_dump``, LlamaIndex's ``to_dict``) hold every field,
    and must load back.
    """
    given = [name for name in names if name in options.model_fields_set]
    if options.scorer is not None:
        return given
    fields = type(options).model_fields
    return [name for name in given if getattr(options, name) != fields[name].default]


def check_top_n(value: Any, name: str = "top_n") -> int | None:
    """A per-call number of results: a positive int or ``None`` (keep every result)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value}")
    return value


def rank_call(query: Any, top_n: Any, default: int | None) -> int | None:
    """Check a ranking call's ``query`` (a string); the ``top_n`` it uses (``...``: ``default``)."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}")
    return default if top_n is ... else check_top_n(top_n)


def best_results(
    scores: Sequence[float], top_n: int | None, score_threshold: float | None
) -> list[tuple[int, float]]:
    """``(input index, score)`` best first (ties keep input order), thresholded, then cut."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if score_threshold is not None:
        kept = [i for i in order if scores[i] >= score_threshold]
        if len(kept) < len(order):
            logger.debug(
                "score_threshold=%s dropped %d of %d results",
                score_threshold,
                len(order) - len(kept),
                len(order),
            )
        order = kept
    if top_n is not None:
        order = order[:top_n]
    return [(i, scores[i]) for i in order]


async def ascore_texts(
    get_scorer: Callable[[], Any], query: str, texts: list[str], normalize: bool | None
) -> list[float]:
    """The scores of ``texts``, awaited: the scorer's own ``ascore`` if it has one, else
    ``score`` in a worker thread (the event loop stays free while the model runs).

    ``get_scorer`` runs in a worker thread too: its first call may load a model.
    """
    scorer = await asyncio.to_thread(get_scorer)
    ascore = getattr(scorer, "ascore", None)
    if ascore is not None and inspect.iscoroutinefunction(ascore):
        return list(await ascore(query, texts, normalize=normalize))
    return await asyncio.to_thread(scorer.score, query, texts, normalize=normalize)


def score_pairs(scorer: Any, pairs: Sequence[Sequence[Any]], normalize: bool) -> list[float]:
    """Scores of ``(query, passage)`` pairs in input order.

    A scorer without ``score_pairs`` (a remote one) is called once per distinct query.
    """
    if callable(getattr(scorer, "score_pairs", None)):
        return scorer.score_pairs(pairs, normalize=normalize)
    pairs = list(pairs)
    by_query: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or len(pair) != 2:
            raise ValueError(f"pairs[{i}] must be a (query, passage) pair, got {pair!r}")
        by_query.setdefault(pair[0], []).append(i)
    scores: list[float] = [0.0] * len(pairs)
    for query, indices in by_query.items():
        got = scorer.score(query, [pairs[i][1] for i in indices], normalize=normalize)
        for i, score in zip(indices, got):
            scores[i] = float(score)
    return scores
