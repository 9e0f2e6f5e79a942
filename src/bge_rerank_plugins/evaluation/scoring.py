"""One ``score_many`` call for every (query, candidate) pair of a split."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

from ..beir import BeirDataset
from ..fields import PassageTemplate
from .candidates import EvalQuery

__all__ = ["score_all", "takes_keyword"]

logger = logging.getLogger("bge_rerank_plugins.evaluation.runner")


def takes_keyword(method: Any, name: str) -> bool:
    """Whether ``method`` has a parameter called ``name`` that can be passed by keyword."""
    try:
        parameter = inspect.signature(method).parameters.get(name)
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def score_all(
    scorer: Any,
    queries: Sequence[EvalQuery],
    dataset: BeirDataset,
    template: PassageTemplate,
    show_progress_bar: bool | None,
    raw: bool = False,
) -> list[list[float]]:
    """Every query's candidate scores in one ``score_many`` call; ``raw=True`` asks for raw
    logits (``normalize=False``) when the scorer's ``score_many`` takes ``normalize``."""
    texts = {}
    for query in queries:
        for doc_id in query.doc_ids:
            if doc_id not in texts:
                texts[doc_id] = template.render(dataset.corpus[doc_id])
    candidates = [[texts[d] for d in q.doc_ids] for q in queries]
    options: dict[str, Any] = {}
    if raw and takes_keyword(scorer.score_many, "normalize"):
        options["normalize"] = False
    if show_progress_bar is not None:
        if takes_keyword(scorer.score_many, "show_progress_bar"):
            options["show_progress_bar"] = show_progress_bar
        else:
            logger.debug(
                "%s.score_many takes no show_progress_bar; show_progress_bar=%r is not used",
                type(scorer).__name__,
                show_progress_bar,
            )
    scores = scorer.score_many([q.text for q in queries], candidates, **options)
    if len(scores) != len(queries) or any(len(s) != len(c) for s, c in zip(scores, candidates)):
        raise ValueError(
            f"{type(scorer).__name__}.score_many returned scores of the wrong shape: one list "
            "per query with one score per candidate is expected"
        )
    return scores
