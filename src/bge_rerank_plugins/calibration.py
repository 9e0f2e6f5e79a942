"""Reranker scores as probabilities of relevance, and the small file that stores how.

A cross-encoder's sigmoid is not a probability: a bge-reranker can give 0.9 to passages that
are relevant half the time on one corpus and 0.2 to relevant ones on another. A *calibration*,
fitted on labelled (query, candidate) pairs of the target data
(:func:`bge_rerank_plugins.evaluation.fit_fusion`, ``bge-rerank fit``), maps the raw logit to
the probability that the passage is relevant:

* **Platt scaling** (``"platt"``): ``p = sigmoid(a * logit + b)``, a logistic regression on the
  raw logit (Platt's smoothed targets, so it never gives exactly 0 or 1). Temperature scaling
  is its special case ``b = 0``. Two parameters: it works from a few hundred pairs.
* **Isotonic regression** (``"isotonic"``, pool-adjacent-violators): any non-decreasing map,
  linear between the fitted points and flat beyond them. It needs more data; it is fitted only
  when there are at least :data:`ISOTONIC_MIN_PAIRS` pairs with :data:`ISOTONIC_MIN_EACH`
  relevant and as many non-relevant ones, and used when its held-out error is lower.

Both, the chosen one and (optionally) a fitted :class:`~bge_rerank_plugins.fusion.FusionConfig`
are written to ``reranker_calibration.json`` (:data:`CALIBRATION_FILE`) in the model folder. The
scorer loads that file when present: ``normalize="calibrated"`` then returns probabilities, so
an adapter's ``score_threshold=0.5`` means "at least an even chance of being relevant". The
probabilities hold for data like the labelled data (its domain, first stage and ``top_k``).

>>> cal = Calibration(platt=PlattScaling(a=2.0, b=-1.0))
>>> round(cal.probability(0.5), 3), round(cal.probability(3.0), 3)
(0.5, 0.993)
>>> Calibration.from_dict(cal.to_dict()) == cal
True
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RerankerError
from .fusion import FusionConfig

__all__ = [
    "CALIBRATION_FILE",
    "ISOTONIC_MIN_EACH",
    "ISOTONIC_MIN_PAIRS",
    "SCHEMA_VERSION",
    "Calibration",
    "CalibrationMissingError",
    "IsotonicMap",
    "PlattScaling",
    "convert_scores",
    "find_calibration",
    "model_calibration",
    "fit_isotonic",
    "fit_platt",
    "sigmoid",
]

logger = logging.getLogger(__name__)

#: The file in a model folder that holds its calibration and fusion settings.
CALIBRATION_FILE = "reranker_calibration.json"
#: The version of that file's layout; a file of a newer version is refused, never misread.
SCHEMA_VERSION = 1
#: Isotonic regression is fitted only on at least this many pairs ...
ISOTONIC_MIN_PAIRS = 1000
#: ... of which at least this many are relevant and this many are not.
ISOTONIC_MIN_EACH = 50


class CalibrationMissingError(RerankerError, ValueError):
    """``normalize="calibrated"`` for a model whose folder has no calibration file."""


def sigmoid(x: float) -> float:
    """The logistic function of a finite raw score, without overflow: the one used for every
    score in [0, 1] (``normalize=True`` in the scorer, the server's per-request sigmoid)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass(frozen=True)
class PlattScaling:
    """``p = sigmoid(a * logit + b)``."""

    a: float
    b: float

    def __call__(self, raw: float) -> float:
        return sigmoid(self.a * raw + self.b)


@dataclass(frozen=True)
class IsotonicMap:
    """A non-decreasing map: linear between the points ``(xs[i], ys[i])``, flat beyond them."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.xs) != len(self.ys) or not self.xs:
            raise ValueError("an isotonic map needs as many ys as xs, and at least one point")
        if any(b < a for a, b in zip(self.xs, self.xs[1:])):
            raise ValueError("isotonic xs must be sorted")
        if any(b < a for a, b in zip(self.ys, self.ys[1:])):
            raise ValueError("isotonic ys must be non-decreasing")

    def __call__(self, raw: float) -> float:
        xs, ys = self.xs, self.ys
        if raw <= xs[0]:
            return ys[0]
        if raw >= xs[-1]:
            return ys[-1]
        j = bisect.bisect_right(xs, raw)
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (raw - x0) / (x1 - x0)


def fit_platt(raw: Sequence[float], labels: Sequence[bool], iterations: int = 100) -> PlattScaling:
    """Platt scaling fitted by Newton's method, with Platt's smoothed targets.

    The targets are ``(n+ + 1) / (n+ + 2)`` for relevant pairs and ``1 / (n- + 2)`` for the
    others, so a separable sample does not send ``a`` to infinity.

    >>> cal = fit_platt([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0], [0, 0, 1, 0, 1, 1])
    >>> cal.a > 0
    True
    """
    import numpy as np

    if len(raw) != len(labels) or not len(raw):
        raise ValueError("fit_platt needs one label per score and at least one score")
    x = np.asarray(raw, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    positives = int(y.sum())
    negatives = len(y) - positives
    t = np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    params = np.array([1.0, math.log((positives + 1) / (negatives + 1))])

    def loss(ab: Any) -> float:
        z = ab[0] * x + ab[1]  # log(1 + e^z) - t z, without overflow
        return float(np.sum(np.logaddexp(0.0, z) - t * z))

    current = loss(params)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(params[0] * x + params[1])))
        d, w = p - t, np.maximum(p * (1 - p), 1e-12)
        grad = np.array([np.sum(d * x), np.sum(d)])
        hess = np.array([[np.sum(w * x * x) + 1e-9, np.sum(w * x)], [np.sum(w * x), np.sum(w)]])
        step = np.linalg.solve(hess + np.eye(2) * 1e-9, grad)
        scale = 1.0
        while scale > 1e-8:  # backtracking: a step never makes the loss worse
            new = loss(params - scale * step)
            if new <= current:
                break
            scale /= 2
        else:
            break
        params = params - scale * step
        done = current - new < 1e-10 * max(1.0, abs(current))
        current = new
        if done:
            break
    return PlattScaling(a=float(params[0]), b=float(params[1]))


def fit_isotonic(raw: Sequence[float], labels: Sequence[bool]) -> IsotonicMap:
    """Isotonic regression of the labels on the scores, by pool-adjacent-violators.

    Each pooled block becomes one point (its mean score, its share of relevant pairs).

    >>> fit_isotonic([0.0, 1.0, 2.0, 3.0], [0, 1, 0, 1])
    IsotonicMap(xs=(0.0, 1.5, 3.0), ys=(0.0, 0.5, 1.0))
    """
    if len(raw) != len(labels) or not raw:
        raise ValueError("fit_isotonic needs one label per score and at least one score")
    # blocks: [sum of x, sum of y, count], merged while a block is not above the one before
    blocks: list[list[float]] = []
    for x, y in sorted(zip(map(float, raw), (1.0 if y else 0.0 for y in labels))):
        blocks.append([x, y, 1.0])
        while len(blocks) > 1 and blocks[-2][1] * blocks[-1][2] >= blocks[-1][1] * blocks[-2][2]:
            sx, sy, n = blocks.pop()
            blocks[-1][0] += sx
            blocks[-1][1] += sy
            blocks[-1][2] += n
    return IsotonicMap(xs=tuple(b[0] / b[2] for b in blocks), ys=tuple(b[1] / b[2] for b in blocks))


@dataclass(frozen=True)
class Calibration:
    """A model's calibration (and, optionally, its fitted fusion), as stored in the model folder.

    Attributes:
        platt: Platt scaling, always fitted.
        isotonic: the isotonic map, when there was enough data.
        method: which one :meth:`probability` uses: ``"platt"`` or ``"isotonic"``.
        fusion: the fusion fitted on the same data (``None`` if not fitted).
        info: how it was fitted (data, pairs, held-out figures); free-form, JSON-ready.
    """

    platt: PlattScaling
    isotonic: IsotonicMap | None = None
    method: str = "platt"
    fusion: FusionConfig | None = None
    info: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.method not in ("platt", "isotonic"):
            raise ValueError(f"method must be 'platt' or 'isotonic', got {self.method!r}")
        if self.method == "isotonic" and self.isotonic is None:
            raise ValueError("method='isotonic' needs an isotonic map")

    def probability(self, raw: float) -> float:
        """The probability that a pair with raw score (logit) ``raw`` is relevant."""
        mapping = self.isotonic if self.method == "isotonic" else self.platt
        return float(mapping(raw))  # type: ignore[misc]

    def probabilities(self, raw: Sequence[float]) -> list[float]:
        """:meth:`probability` of each raw score."""
        return [self.probability(x) for x in raw]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready content of the calibration file."""
        return {
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "platt": {"a": self.platt.a, "b": self.platt.b},
            "isotonic": None
            if self.isotonic is None
            else {"x": list(self.isotonic.xs), "y": list(self.isotonic.ys)},
            "fusion": None if self.fusion is None else self.fusion.to_dict(),
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "calibration") -> Calibration:
        """The calibration a :meth:`to_dict` dict describes; a bad one is a ValueError naming
        ``where``."""
        try:
            version = data["schema_version"]
            if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
                raise ValueError(
                    f"schema_version {version!r} is not one this version reads (1 to "
                    f"{SCHEMA_VERSION}); upgrade bge-rerank-plugins or fit it again"
                )
            iso = data.get("isotonic")
            fusion = data.get("fusion")
            return cls(
                platt=PlattScaling(a=float(data["platt"]["a"]), b=float(data["platt"]["b"])),
                isotonic=None
                if iso is None
                else IsotonicMap(tuple(map(float, iso["x"])), tuple(map(float, iso["y"]))),
                method=data.get("method", "platt"),
                fusion=None if fusion is None else FusionConfig.from_dict(fusion),
                info=dict(data.get("info") or {}),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: not a valid calibration file ({error})") from error

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write :data:`CALIBRATION_FILE` into ``folder`` (a model folder); returns its path."""
        path = Path(folder) / CALIBRATION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # never a half-written file next to the model
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read a calibration file (or the one in a model folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / CALIBRATION_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not a valid calibration file ({error})") from error
        return cls.from_dict(data, str(path))


def find_calibration(source: str, revision: str | None = None) -> Calibration | None:
    """The calibration stored with the model ``source`` (a folder, or a Hub id already in the
    local cache), or ``None``. Never downloads."""
    path = Path(source) / CALIBRATION_FILE
    if not path.is_file() and not Path(source).is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, CALIBRATION_FILE, revision=revision)
        except Exception:  # not a repo id, no hub library: no calibration
            cached = None
        path = Path(cached) if isinstance(cached, str) else path
    if not path.is_file():
        return None
    calibration = Calibration.load(path)
    logger.debug("model %s: calibration %s (%s)", source, path, calibration.method)
    return calibration


def model_calibration(
    source: str, revision: str | None, normalize: bool | str, model_name: str = ""
) -> Calibration | None:
    """:func:`find_calibration`, refusing ``normalize="calibrated"`` without a file.

    Raises:
        CalibrationMissingError: ``normalize="calibrated"`` and the model has no calibration.
    """
    calibration = find_calibration(source, revision)
    if calibration is None and normalize == "calibrated":
        convert_scores([], normalize, None, model_name or source)  # raises, with the fix
    return calibration


def convert_scores(
    raw: Sequence[float],
    normalize: bool | str,
    calibration: Calibration | None,
    model_name: str = "",
) -> list[float]:
    """Raw scores as the scorer returns them: logits, sigmoid, or calibrated probabilities.

    Raises:
        CalibrationMissingError: ``normalize="calibrated"`` and ``calibration`` is ``None``.
    """
    if normalize == "calibrated":
        if calibration is None:
            raise CalibrationMissingError(
                f"normalize='calibrated' but model={model_name!r} has no {CALIBRATION_FILE}; "
                "fit one on labelled data with `bge-rerank fit --model <folder> --data "
                "<beir folder>` (or bge_rerank_plugins.evaluation.fit_fusion), or use "
                "normalize=True (sigmoid) / False (raw logits)."
            )
        return calibration.probabilities(raw)
    if normalize:
        return [sigmoid(v) for v in raw]
    return [float(v) for v in raw]
