"""``fit_fusion``: learn a model's fusion weight and score calibration from labelled queries.

One call scores every (query, candidate) pair once (raw logits) and fits, with K-fold
cross-validation over queries, (a) the fusion with the first stage that maximises nDCG@k
(:mod:`~bge_rerank_plugins.evaluation.fusion_fit`) and (b) the calibration of the raw logits into
probabilities of relevance (:mod:`bge_rerank_plugins.calibration`): Platt scaling and beta
calibration always, isotonic regression when there is enough data, the stored method chosen by
held-out log loss over queries; the figures reported are the held-out ones.
:meth:`FitResult.save` writes both to ``reranker_calibration.json`` in the model folder, where
the scorer finds it (``normalize="calibrated"``).

Labels: a candidate is relevant when its qrels grade is >= ``relevance_threshold``; candidates
without a qrels row count as not relevant, so the probabilities are those of being *judged*
relevant, for candidates drawn like these (the same first stage and ``top_k``).

>>> result = fit_fusion("models/tuned", "data/scifact", "dev", top_k=30)  # doctest: +SKIP
>>> print(result.summary()); result.save("models/tuned")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..beir import BeirDataset
from ..calibration import (
    CALIBRATION_METHODS,
    ISOTONIC_MIN_EACH,
    ISOTONIC_MIN_PAIRS,
    Calibration,
    fit_beta,
    fit_isotonic,
    fit_platt,
    sigmoid,
)
from .calibration_report import CalibrationReport, log_loss
from .candidates import prepare_queries, resolve_source, resolve_template
from .fusion_fit import FusionFit, FusionSample, cross_validate_fusion, fold_ids
from .runner import as_dataset, as_scorer, system_name
from .scoring import score_all, takes_keyword

__all__ = ["FitResult", "LabelledQuery", "fit_calibration", "fit_fusion"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledQuery:
    """One labelled query for :func:`fit_fusion` when the data is not a BEIR folder.

    Attributes:
        query: the query text.
        candidates: passages (strings or records) in first-stage order.
        grades: one relevance grade per candidate (0: not relevant).
        first_stage_scores: the first stage's scores, same order (``None``: the order only).
        qid: an id for reports (default: the position).
    """

    query: str
    candidates: Sequence[Any]
    grades: Sequence[float]
    first_stage_scores: Sequence[float] | None = None
    qid: str | None = None


@dataclass
class FitResult:
    """What :func:`fit_fusion` learnt: the fusion, the calibration and their held-out figures."""

    fusion: FusionFit
    calibration: Calibration
    report: CalibrationReport

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``reranker_calibration.json`` (calibration + fusion) into ``folder``."""
        return self.calibration.save(folder)

    def summary(self) -> str:
        """The held-out figures, as printed by ``bge-rerank fit``."""
        return self.fusion.summary() + "\n" + self.report.summary()


def _choose_method(per_query: dict[str, list[float]], candidates: Sequence[str]) -> tuple[str, str]:
    """The method whose held-out log loss wins, simplest first, by the one-standard-error rule.

    ``per_query``: method -> each query's summed held-out log loss. Going down ``candidates``
    (platt, beta, isotonic), a method replaces the best so far only when its total is lower by
    more than one standard error of the paired per-query differences: an extra degree of
    freedom has to pay for itself on queries it was not fitted on, not win by noise.
    """
    best = candidates[0]
    for name in candidates[1:]:
        gains = [b - n for b, n in zip(per_query[best], per_query[name])]
        q = len(gains)
        mean = sum(gains) / q
        spread = math.sqrt(sum((g - mean) ** 2 for g in gains) / max(q - 1, 1) / q)
        if mean > spread:
            best = name
    why = (
        f"{len(per_query[best])}-query CV log loss, one-standard-error rule, simplest first: "
        + " < ".join(candidates)
    )
    return best, why


def fit_calibration(
    raw: Sequence[Sequence[float]],
    labels: Sequence[Sequence[bool]],
    *,
    folds: int = 5,
    seed: int = 0,
    method: str = "auto",
) -> tuple[Calibration, CalibrationReport]:
    """Platt, beta (and, with enough data, isotonic) calibration of per-query raw scores.

    Held-out probabilities come from fits on the other folds (folds over queries); the stored
    maps are fitted on everything. ``method="auto"`` stores the method with the lowest held-out
    log loss (:func:`_choose_method`); ``"platt"``, ``"beta"`` or ``"isotonic"`` store that one
    (isotonic is then fitted whatever the amount of data, with a warning below the minimum).
    """
    if method != "auto" and method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibration method must be 'auto' or one of {CALIBRATION_METHODS}, got {method!r}"
        )
    n = len(raw)
    if n < 2:
        raise ValueError(f"calibration needs at least 2 labelled queries, got {n}")
    folds = min(folds, n)
    assignment = fold_ids(n, folds, seed)
    flat_x = [float(x) for scores in raw for x in scores]
    flat_y = [bool(y) for ys in labels for y in ys]
    fold_of = [assignment[q] for q, scores in enumerate(raw) for _ in scores]
    positives = sum(flat_y)
    enough = (
        len(flat_y) >= ISOTONIC_MIN_PAIRS
        and positives >= ISOTONIC_MIN_EACH
        and len(flat_y) - positives >= ISOTONIC_MIN_EACH
    )
    if not positives or positives == len(flat_y):
        raise ValueError(
            "calibration needs relevant and non-relevant candidates; these labels are all "
            f"{'relevant' if positives else 'not relevant'}"
        )
    if method == "isotonic" and not enough:
        logger.warning(
            "calibration method 'isotonic' asked for on %d pairs (%d relevant), below the "
            "%d pairs / %d of each it needs to be reliable; fitting it anyway",
            len(flat_y), positives, ISOTONIC_MIN_PAIRS, ISOTONIC_MIN_EACH,
        )  # fmt: skip
    with_isotonic = enough or method == "isotonic"
    fitters = {"platt": fit_platt, "beta": fit_beta}
    if with_isotonic:
        fitters["isotonic"] = fit_isotonic
    curves: dict[str, list[float]] = {"sigmoid": [sigmoid(x) for x in flat_x]}
    curves.update({name: [0.0] * len(flat_x) for name in fitters})
    for fold in range(folds):
        train = [i for i, f in enumerate(fold_of) if f != fold]
        test = [i for i, f in enumerate(fold_of) if f == fold]
        if not test:
            continue
        xs, ys = [flat_x[i] for i in train], [flat_y[i] for i in train]
        for name, fit in fitters.items():  # every fit copes with one class (smoothed targets)
            mapping = fit(xs, ys)
            for i in test:
                curves[name][i] = mapping(flat_x[i])
    # each query's summed held-out log loss, per method: the unit the choice resamples
    bounds = [0]
    for scores in raw:
        bounds.append(bounds[-1] + len(scores))
    per_query = {
        name: [
            log_loss(curves[name][lo:hi], flat_y[lo:hi], total=True)
            for lo, hi in itertools.pairwise(bounds)
        ]
        for name in fitters
    }
    if method == "auto":
        chosen, why = _choose_method(per_query, list(fitters))
    else:
        chosen, why = method, "asked for"
    report = CalibrationReport(flat_y, curves, chosen=chosen, choice=why)
    logger.info(
        "calibration: held-out log loss %s; ECE %s; chose %s (%s)",
        ", ".join(f"{k} {v:.5f}" for k, v in report.log_loss.items()),
        ", ".join(f"{k} {v:.4f}" for k, v in report.ece.items()),
        chosen,
        why,
    )
    calibration = Calibration(
        platt=fit_platt(flat_x, flat_y),
        isotonic=fit_isotonic(flat_x, flat_y) if with_isotonic else None,
        beta=fit_beta(flat_x, flat_y),
        method=chosen,
    )
    return calibration, report


def _samples_from_beir(
    model: Any,
    data: BeirDataset,
    *,
    top_k: int | None,
    max_queries: int | None,
    candidates: str,
    template: Any,
    relevance_threshold: float,
    show_progress_bar: bool | None,
) -> tuple[list[FusionSample], dict[str, Any]]:
    source = resolve_source(data, candidates)
    queries, first_stage, _ = prepare_queries(
        data,
        top_k=top_k,
        max_queries=max_queries,
        candidates=source,
        relevance_threshold=relevance_threshold,
        template=template,
    )
    queries = [q for q in queries if q.doc_ids]
    tpl = resolve_template(template, model)
    scores = score_all(model, queries, data, tpl, show_progress_bar, raw=True)
    samples = [
        FusionSample(q.qid, q.doc_ids, tuple(s), q.first_stage_scores, q.grades)
        for q, s in zip(queries, scores)
    ]
    where = {
        "dataset": str(data.path),
        "split": data.split,
        "first_stage": first_stage,
        "candidates": source,
        "top_k": top_k,
    }
    return samples, where


def _samples_from_labelled(
    model: Any, data: Sequence[LabelledQuery], show_progress_bar: bool | None
) -> list[FusionSample]:
    for i, item in enumerate(data):
        if not isinstance(item, LabelledQuery):
            raise TypeError(f"data[{i}] must be a LabelledQuery, got {type(item).__name__}")
        if len(item.grades) != len(item.candidates):
            raise ValueError(f"data[{i}]: one grade per candidate is needed")
    options: dict[str, Any] = {}
    if takes_keyword(model.score_many, "normalize"):
        options["normalize"] = False
    if show_progress_bar is not None and takes_keyword(model.score_many, "show_progress_bar"):
        options["show_progress_bar"] = show_progress_bar
    texts = [list(d.candidates) for d in data]
    scores = model.score_many([d.query for d in data], texts, **options)
    samples = []
    for i, (item, s) in enumerate(zip(data, scores)):
        ids = tuple(str(j) for j in range(len(item.candidates)))
        first = None if item.first_stage_scores is None else tuple(item.first_stage_scores)
        grades = {d: float(g) for d, g in zip(ids, item.grades)}
        samples.append(FusionSample(item.qid or str(i), ids, tuple(s), first, grades))
    return samples


def fit_fusion(
    scorer: Any,
    data: BeirDataset | str | os.PathLike[str] | Sequence[LabelledQuery],
    split: str = "dev",
    *,
    top_k: int | None = 30,
    max_queries: int | None = None,
    candidates: str = "auto",
    template: Any = None,
    relevance_threshold: float = 1,
    method: str = "auto",
    folds: int = 5,
    k: int = 10,
    seed: int = 0,
    show_progress_bar: bool | None = None,
    calibration_method: str = "auto",
) -> FitResult:
    """Fit the fusion weight (max nDCG@``k``, K-fold CV) and the calibration of ``scorer``.

    Args:
        scorer: a ``CrossEncoderScorer`` or a model id / folder (raw logits are used), or any
            object with ``score_many`` (its scores are used as they are).
        data: a BEIR-style folder or :class:`~bge_rerank_plugins.beir.BeirDataset` (the
            first-stage candidates as in :func:`~bge_rerank_plugins.evaluation.evaluate_models`),
            or a list of :class:`LabelledQuery`.
        split, top_k, max_queries, candidates, template, relevance_threshold: as in
            :func:`~bge_rerank_plugins.evaluation.evaluate_reranker` (BEIR data only, except
            relevance_threshold).
        method: ``"blend"``, ``"rrf"`` or ``"auto"`` (the better on the training folds).
        calibration_method: ``"platt"``, ``"beta"``, ``"isotonic"`` or ``"auto"`` (the lowest
            held-out log loss; see :func:`fit_calibration`).
        folds: K of the cross-validation over queries; ``k``: the nDCG cut-off; ``seed``:
            fixes the folds.

    Returns:
        A :class:`FitResult`; ``result.save(model_folder)`` writes the calibration file.
    """
    model = as_scorer(scorer)
    if model is None:
        raise TypeError("scorer must be a reranker (a model id, folder or scorer), not None")
    if isinstance(data, (BeirDataset, str, os.PathLike)):
        dataset = as_dataset(data, split)
        samples, where = _samples_from_beir(
            model,
            dataset,
            top_k=top_k,
            max_queries=max_queries,
            candidates=candidates,
            template=template,
            relevance_threshold=relevance_threshold,
            show_progress_bar=show_progress_bar,
        )
    else:
        samples, where = _samples_from_labelled(model, list(data), show_progress_bar), {}
    fusion = cross_validate_fusion(samples, method=method, folds=folds, k=k, seed=seed)
    labels = [[s.grades.get(d, 0) >= relevance_threshold for d in s.doc_ids] for s in samples]
    calibration, report = fit_calibration(
        [s.reranker_scores for s in samples],
        labels,
        folds=folds,
        seed=seed,
        method=calibration_method,
    )
    info = {
        "model": system_name(model),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **where,
        "queries": len(samples),
        "relevance_threshold": relevance_threshold,
        "seed": seed,
        "fusion_fit": fusion.to_dict(),
        "calibration_fit": report.to_dict(),
    }
    calibration = dataclasses.replace(calibration, fusion=fusion.config, info=info)
    logger.info("fit_fusion: %s", fusion.summary().replace("\n", ";"))
    return FitResult(fusion, calibration, report)
