"""Helpers of ``fusion_scifact.py`` that run without a model or data (tested on tiny inputs).

* :class:`RawScores`: a scorer wrapper that scores each pair once, backed by the cache.
* :class:`ScoreCache`: the reranker's raw scores on disk, so that a second run with another
  calibration or fusion setting does not score the pairs again. One JSON file per key: the
  model folder (its path, and the name, size and mtime of each weights file), the dataset,
  split and first stage, ``max_length`` and ``top_k``. Inside, each pair is stored under the
  SHA-1 of its query and passage texts, so a pair is never matched to another's score.
* :func:`calibration_table`: fit the calibration on one half of the queries, measure every
  method on the other half (ECE, log loss, and what ``score_threshold`` keeps).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("fusion_scifact")

#: Files whose change means new weights (and so new scores).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")
#: The targets of issue 23 for the calibration stored by the fit.
ECE_TARGET, GAP_TARGET = 0.05, 0.1


def pair_key(query: str, passage: str) -> str:
    """The cache's key of one (query, passage) pair: SHA-1 of both texts."""
    return hashlib.sha1(f"{query}\x00{passage}".encode()).hexdigest()


def model_fingerprint(model: str) -> dict[str, Any]:
    """The model's identity for the cache: its resolved folder and weights files (name, size,
    mtime), or the id as given when it is not a local folder."""
    folder = Path(model)
    if not folder.is_dir():
        return {"model": str(model)}
    weights = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
            stat = path.stat()
            weights.append([str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns])
    return {"model": str(folder.resolve()), "weights": weights}


class ScoreCache:
    """Raw scores on disk, one JSON file per (model, data, first stage, settings) key."""

    def __init__(self, folder: Path, model: str, max_length: int, top_k: int | None) -> None:
        self.folder = Path(folder)
        self.base = {**model_fingerprint(model), "max_length": max_length, "top_k": top_k}

    def key(self, dataset: str, split: str, first_stage: str) -> dict[str, Any]:
        """The full key of one run."""
        return {**self.base, "dataset": dataset, "split": split, "first_stage": first_stage}

    def path(self, key: dict[str, Any]) -> Path:
        """The file of ``key``: readable names, then a hash of the whole key."""
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        label = re.sub(
            r"[^A-Za-z0-9._-]+", "-", f"{key['dataset']}_{key['split']}_{key['first_stage']}"
        )
        return self.folder / f"scores_{label}_{digest}.json"

    def load(self, key: dict[str, Any]) -> dict[str, float]:
        """The stored scores of ``key`` (empty when none, or when the file is for another key)."""
        path = self.path(key)
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            logger.warning("score cache %s unreadable (%s); scoring again", path, error)
            return {}
        if data.get("key") != key:
            logger.warning("score cache %s was written for another key; scoring again", path)
            return {}
        scores = {k: float(v) for k, v in data["scores"].items()}
        logger.info("score cache: %d pairs from %s", len(scores), path)
        return scores

    def save(self, key: dict[str, Any], scores: dict[str, float]) -> Path:
        """Write ``scores`` for ``key`` (atomically: a killed run leaves the old file)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, "scores": scores}), encoding="utf-8")
        os.replace(tmp, path)
        logger.info("score cache: wrote %d pairs to %s", len(scores), path)
        return path


class RawScores:
    """A scorer wrapper that asks for raw logits and remembers them, pair by pair.

    The evaluation code calls ``score_many(..., normalize=False)`` (this wrapper has no
    ``normalize`` attribute, so the reranker's column is ranked by the logits: the sigmoid's
    order, without its ties at saturation). Pairs already scored are not scored again, so the
    dense run only scores the candidates BM25 did not bring, and the calibration reuses them.
    With a :class:`ScoreCache`, each run (:meth:`section`) also reads the pairs stored for it
    and, on :meth:`flush`, stores every pair it used.
    """

    def __init__(self, scorer: Any, label: str, cache: ScoreCache | None = None) -> None:
        self.scorer = scorer
        self.model_name = label
        self.template = scorer.template
        self.pairs_scored = 0
        self.pairs_from_cache = 0
        self._raw: dict[tuple[str, str], float] = {}
        self.cache = cache
        self._key: dict[str, Any] | None = None
        self._stored: dict[str, float] = {}  # the current run's file
        self._used: dict[str, float] = {}  # the pairs the current run asked for

    def section(self, dataset: str, split: str, first_stage: str) -> None:
        """Start a run: store the previous run's pairs, read this one's."""
        self.flush()
        if self.cache is not None:
            self._key = self.cache.key(dataset, split, first_stage)
            self._stored, self._used = self.cache.load(self._key), {}

    def flush(self) -> None:
        """Write the current run's file when it gained pairs."""
        if self.cache is None or self._key is None:
            return
        if any(k not in self._stored for k in self._used):
            self._stored = {**self._stored, **self._used}
            self.cache.save(self._key, self._stored)

    def score_many(
        self,
        queries: Sequence[str],
        candidates: Sequence[Sequence[str]],
        *,
        normalize: bool | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[list[float]]:
        if normalize:
            raise ValueError("RawScores returns raw logits only: normalize must be False/None")
        todo: dict[str, dict[str, None]] = {}  # query -> its new passages, in order
        for query, passages in zip(queries, candidates):
            for passage in passages:
                if (query, passage) in self._raw:
                    continue
                stored = self._stored.get(pair_key(query, passage))
                if stored is not None:
                    self._raw[(query, passage)] = stored
                    self.pairs_from_cache += 1
                else:
                    todo.setdefault(query, {})[passage] = None
        if todo:
            lists = [list(p) for p in todo.values()]
            got = self.scorer.score_many(
                list(todo), lists, normalize=False, show_progress_bar=show_progress_bar
            )
            for (query, passages), scores in zip(zip(todo, lists), got):
                self._raw.update({(query, p): float(s) for p, s in zip(passages, scores)})
                self.pairs_scored += len(passages)
        if self.cache is not None:
            for q, ps in zip(queries, candidates):
                self._used.update({pair_key(q, p): self._raw[(q, p)] for p in ps})
        return [[self._raw[(q, p)] for p in ps] for q, ps in zip(queries, candidates)]

    def lookup(self, data: Any, query: Any) -> list[float]:
        """The raw scores of an ``EvalQuery``'s candidates (scored earlier)."""
        from bge_rerank_plugins.fields import as_template

        template = as_template(self.template)
        texts = [template.render(data.corpus[d]) for d in query.doc_ids]
        return self.score_many([query.text], [texts])[0]


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def calibration_table(
    fit_x: Sequence[Sequence[float]],
    fit_y: Sequence[Sequence[bool]],
    test_x: Sequence[Sequence[float]],
    test_y: Sequence[Sequence[bool]],
    *,
    folds: int,
    seed: int,
    method: str = "auto",
) -> tuple[list[str], dict[str, Any], dict[str, list[float]], list[bool]]:
    """Fit on (``fit_x``, ``fit_y``) with ``fit_calibration``; measure each method on the test half.

    Returns the Markdown table lines, the figures (JSON-ready), the measured half's curves and
    its labels (for the reliability diagram). Isotonic is fitted here for the table when the fit
    half is below the library's data minimum (and marked so).
    """
    from bge_rerank_plugins.calibration import fit_isotonic, sigmoid
    from bge_rerank_plugins.evaluation import expected_calibration_error, fit_calibration
    from bge_rerank_plugins.evaluation.calibration_report import (
        THRESHOLD,
        log_loss,
        threshold_figures,
    )

    calibration, report = fit_calibration(fit_x, fit_y, folds=folds, seed=seed, method=method)
    flat_x = [float(x) for xs in test_x for x in xs]
    labels = [bool(y) for ys in test_y for y in ys]
    isotonic, iso_note = calibration.isotonic, "fitted by fit_calibration"
    if isotonic is None:  # below the library's minimum: fitted here, for the table only
        isotonic = fit_isotonic([x for xs in fit_x for x in xs], [y for ys in fit_y for y in ys])
        iso_note = "too few pairs for fit_calibration: fitted here, never chosen by the library"
    maps = {"platt": calibration.platt, "beta": calibration.beta, "isotonic": isotonic}
    curves = {"sigmoid (uncalibrated)": [sigmoid(x) for x in flat_x]}
    curves.update({name: [m(x) for x in flat_x] for name, m in maps.items()})
    lines = [
        f"| scores | fit-half CV log loss | ECE (10 bins) | log loss | kept (p >= {THRESHOLD}) "
        f"| precision of kept | mean prob. of kept | gap | target (ECE <= {ECE_TARGET}, gap <= "
        f"{GAP_TARGET}) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    figures: dict[str, Any] = {}
    for name, probs in curves.items():
        ece, cut = expected_calibration_error(probs, labels), threshold_figures(probs, labels)
        loss = log_loss(probs, labels)
        cv = report.log_loss.get("sigmoid" if name.startswith("sigmoid") else name)
        figures[name] = {"ece": ece, "log_loss": loss, "fit_cv_log_loss": cv, **cut}
        met = ""
        if name in maps:
            gap_met = (
                "n/a (none kept)"
                if not cut["kept"]
                else "yes"
                if cut["gap"] <= GAP_TARGET
                else "NO"
            )
            met = f"ECE {'yes' if ece <= ECE_TARGET else 'NO'}, gap {gap_met}"
            met += " **(chosen by the fit)**" if name == calibration.method else ""
        lines.append(
            f"| {name} | {_cell(cv, 4)} | {ece:.4f} | {loss:.4f} | {cut['kept']} | "
            f"{_cell(cut['precision'])} | {_cell(cut['mean_probability'])} | {_cell(cut['gap'])} "
            f"| {met} |"
        )
    beta = calibration.beta
    extra = {
        "method": calibration.method,
        "choice": report.choice,
        "platt": {"a": calibration.platt.a, "b": calibration.platt.b},
        "beta": None if beta is None else {"a": beta.a, "b": beta.b, "c": beta.c},
        "fit_report": report.to_dict(),
        "isotonic": iso_note,
        "curves": figures,
    }
    return lines, extra, curves, labels
