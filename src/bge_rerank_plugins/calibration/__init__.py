"""Reranker scores as probabilities of relevance, and the small file that stores how.

A cross-encoder's sigmoid is not a probability: a bge-reranker can give 0.9 to passages that
are relevant half the time on one corpus and 0.2 to relevant ones on another. A *calibration*,
fitted on labelled (query, candidate) pairs of the target data
(:func:`bge_rerank_plugins.evaluation.fit_fusion`, ``bge-rerank fit``), maps the raw logit to
the probability that the passage is relevant:

* **Platt scaling** (``"platt"``): ``p = sigmoid(a * logit + b)``, a logistic regression on the
  raw logit (Platt's smoothed targets, so it never gives exactly 0 or 1). Temperature scaling
  is its special case ``b = 0``. Two parameters: it works from a few hundred pairs.
* **Beta calibration** (``"beta"``, Kull, Silva Filho & Flach 2017): ``p = sigmoid(a * log s -
  b * log(1 - s) + c)`` with ``s = sigmoid(logit)`` and ``a, b >= 0``: one slope for the low
  scores and another for the high ones (``a = b`` is Platt), for a reranker whose top scores
  deserve more confidence than one Platt slope, fitted mostly by the many negatives, gives.
* **Isotonic regression** (``"isotonic"``, pool-adjacent-violators): any non-decreasing map,
  linear between the fitted points and flat beyond them. It needs more data; it is fitted only
  when there are at least :data:`ISOTONIC_MIN_PAIRS` pairs with :data:`ISOTONIC_MIN_EACH`
  relevant and as many non-relevant ones.

The fit (:func:`~bge_rerank_plugins.evaluation.fit_calibration`) picks the method by
cross-validated log loss over queries. The maps, the chosen method and (optionally) a fitted
:class:`~bge_rerank_plugins.fusion.FusionConfig` are written to ``reranker_calibration.json``
(:data:`CALIBRATION_FILE`) in the model folder. The scorer loads that file when present:
``normalize="calibrated"`` then returns probabilities, so an adapter's ``score_threshold=0.5``
means "at least an even chance of being relevant". The probabilities hold for data like the
labelled data (its domain, first stage and ``top_k``).

>>> cal = Calibration(platt=PlattScaling(a=2.0, b=-1.0))
>>> round(cal.probability(0.5), 3), round(cal.probability(3.0), 3)
(0.5, 0.993)
>>> Calibration.from_dict(cal.to_dict()) == cal
True
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RerankerError
from ..fusion import FusionConfig
from .maps import BetaCalibration, IsotonicMap, PlattScaling, fit_beta, fit_isotonic, fit_platt
from .maps import sigmoid as sigmoid

__all__ = [
    "CALIBRATION_FILE",
    "ISOTONIC_MIN_EACH",
    "ISOTONIC_MIN_PAIRS",
    "CALIBRATION_METHODS",
    "SCHEMA_VERSION",
    "BetaCalibration",
    "Calibration",
    "CalibrationMissingError",
    "IsotonicMap",
    "PlattScaling",
    "convert_scores",
    "find_calibration",
    "model_calibration",
    "fit_beta",
    "fit_isotonic",
    "fit_platt",
    "sigmoid",
]

logger = logging.getLogger(__name__)

#: The file in a model folder that holds its calibration and fusion settings.
CALIBRATION_FILE = "reranker_calibration.json"
#: The newest version of that file's layout; a file of a newer version is refused, never
#: misread. Version 2 added beta calibration; a file is written as version 1 unless its method
#: is ``"beta"``, so that older releases still read every file they can use.
SCHEMA_VERSION = 2
#: The values of :attr:`Calibration.method`.
CALIBRATION_METHODS = ("platt", "beta", "isotonic")
#: Isotonic regression is fitted only on at least this many pairs ...
ISOTONIC_MIN_PAIRS = 1000
#: ... of which at least this many are relevant and this many are not.
ISOTONIC_MIN_EACH = 50


class CalibrationMissingError(RerankerError, ValueError):
    """``normalize="calibrated"`` for a model whose folder has no calibration file."""


@dataclass(frozen=True)
class Calibration:
    """A model's calibration (and, optionally, its fitted fusion), as stored in the model folder.

    Attributes:
        platt: Platt scaling, always fitted.
        isotonic: the isotonic map, when there was enough data.
        method: which map :meth:`probability` uses: one of :data:`CALIBRATION_METHODS`.
        fusion: the fusion fitted on the same data (``None`` if not fitted).
        info: how it was fitted (data, pairs, held-out figures); free-form, JSON-ready.
        beta: beta calibration (``None`` in files written before it existed).
    """

    platt: PlattScaling
    isotonic: IsotonicMap | None = None
    method: str = "platt"
    fusion: FusionConfig | None = None
    info: Mapping[str, Any] = field(default_factory=dict, compare=False)
    beta: BetaCalibration | None = None

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {self.method!r}")
        if getattr(self, self.method) is None:
            article = "an" if self.method == "isotonic" else "a"
            raise ValueError(f"method={self.method!r} needs {article} {self.method} map")

    def probability(self, raw: float) -> float:
        """The probability that a pair with raw score (logit) ``raw`` is relevant."""
        return float(getattr(self, self.method)(raw))

    def probabilities(self, raw: Sequence[float]) -> list[float]:
        """:meth:`probability` of each raw score."""
        return [self.probability(x) for x in raw]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready content of the calibration file."""
        beta = self.beta
        return {
            "schema_version": 2 if self.method == "beta" else 1,
            "method": self.method,
            "platt": {"a": self.platt.a, "b": self.platt.b},
            "beta": None if beta is None else {"a": beta.a, "b": beta.b, "c": beta.c},
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
            iso, beta = data.get("isotonic"), data.get("beta")
            fusion = data.get("fusion")
            return cls(
                platt=PlattScaling(a=float(data["platt"]["a"]), b=float(data["platt"]["b"])),
                isotonic=None
                if iso is None
                else IsotonicMap(tuple(map(float, iso["x"])), tuple(map(float, iso["y"]))),
                method=data.get("method", "platt"),
                fusion=None if fusion is None else FusionConfig.from_dict(fusion),
                info=dict(data.get("info") or {}),
                beta=None if beta is None else BetaCalibration(*(float(beta[k]) for k in "abc")),
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
