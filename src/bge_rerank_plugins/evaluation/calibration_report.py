"""How well scores read as probabilities: ECE, log loss, a threshold's precision, a diagram.

ECE uses 10 equal-width bins over [0, 1]: the mean over bins, weighted by the share of pairs in
each, of ``|mean predicted probability - share of relevant pairs|``. 0 is perfect. The log loss
is the mean of ``-log p`` over relevant pairs and ``-log(1 - p)`` over the others, ``p`` kept in
``[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]``. :func:`threshold_figures` is what ``score_threshold`` gives:
the pairs it keeps, their share of relevant ones, their mean probability and the gap between.

>>> expected_calibration_error([0.05, 0.05, 0.95, 0.95], [False, False, True, True])
0.05
>>> threshold_figures([0.2, 0.5, 0.7, 0.9], [True, False, True, True], 0.5)["kept"]
3
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CalibrationReport",
    "expected_calibration_error",
    "log_loss",
    "plot_reliability",
    "reliability",
    "threshold_figures",
]

#: Bins of the ECE and of the reliability diagram.
BINS = 10
#: Probabilities are clipped to [eps, 1 - eps] in the log loss: a map that says 0 or 1 (isotonic
#: at its ends) pays ~9 nats for each pair it is sure about and wrong on, not infinity.
LOG_LOSS_EPS = 1e-4
#: The threshold :class:`CalibrationReport` reports on (an adapter's ``score_threshold``).
THRESHOLD = 0.5


def reliability(
    probabilities: Sequence[float], labels: Sequence[bool], bins: int = BINS
) -> list[tuple[float, float, int, float, float]]:
    """Per equal-width bin: ``(low, high, pairs, mean probability, share relevant)``.

    >>> reliability([0.1, 0.15, 0.9], [False, True, True], bins=2)
    [(0.0, 0.5, 2, 0.125, 0.5), (0.5, 1.0, 1, 0.9, 1.0)]
    """
    if len(probabilities) != len(labels):
        raise ValueError("one label per probability is needed")
    sums = [[0, 0.0, 0.0] for _ in range(bins)]
    for p, y in zip(probabilities, labels):
        b = min(int(p * bins), bins - 1) if p > 0 else 0
        sums[b][0] += 1
        sums[b][1] += p
        sums[b][2] += 1.0 if y else 0.0
    return [
        (i / bins, (i + 1) / bins, int(n), s / n if n else 0.0, pos / n if n else 0.0)
        for i, (n, s, pos) in enumerate(sums)
    ]


def expected_calibration_error(
    probabilities: Sequence[float], labels: Sequence[bool], bins: int = BINS
) -> float:
    """ECE over ``bins`` equal-width bins (0 for no pairs)."""
    total = len(probabilities)
    if not total:
        return 0.0
    table = reliability(probabilities, labels, bins)
    return round(sum(n / total * abs(mean - share) for _, _, n, mean, share in table), 12)


def log_loss(
    probabilities: Sequence[float], labels: Sequence[bool], *, total: bool = False
) -> float:
    """The mean log loss (``total=True``: the sum) of ``probabilities`` for ``labels``.

    >>> round(log_loss([0.5, 0.5], [True, False]), 4)
    0.6931
    """
    if len(probabilities) != len(labels):
        raise ValueError("one label per probability is needed")
    lo, hi = LOG_LOSS_EPS, 1 - LOG_LOSS_EPS
    losses = [-math.log(min(max(p, lo), hi) if y else 1 - min(max(p, lo), hi))
              for p, y in zip(probabilities, labels)]  # fmt: skip
    if total:
        return sum(losses)
    return sum(losses) / len(losses) if losses else 0.0


def threshold_figures(
    probabilities: Sequence[float], labels: Sequence[bool], threshold: float = THRESHOLD
) -> dict[str, float | int | None]:
    """What keeping the pairs with probability >= ``threshold`` gives.

    Returns ``kept`` (pairs), ``precision`` (their share of relevant pairs), ``mean_probability``
    and ``gap`` (``|precision - mean_probability|``: 0 when the kept probabilities are honest);
    the last three are ``None`` when nothing is kept.
    """
    if len(probabilities) != len(labels):
        raise ValueError("one label per probability is needed")
    kept = [(p, bool(y)) for p, y in zip(probabilities, labels) if p >= threshold]
    if not kept:
        return {"kept": 0, "precision": None, "mean_probability": None, "gap": None}
    precision = sum(y for _, y in kept) / len(kept)
    mean = sum(p for p, _ in kept) / len(kept)
    return {
        "kept": len(kept),
        "precision": precision,
        "mean_probability": mean,
        "gap": abs(precision - mean),
    }


@dataclass
class CalibrationReport:
    """Held-out probabilities of each calibration method, and their ECE.

    Attributes:
        labels: whether each pair is relevant.
        probabilities: method name (``"sigmoid"``, ``"platt"``, ``"beta"``, ``"isotonic"``) ->
            the pair's probability, each fitted on the other folds (the sigmoid needs no fit).
        chosen: the method stored in the calibration file.
        ece: method name -> its expected calibration error.
        log_loss: method name -> its mean log loss.
        threshold: method name -> :func:`threshold_figures` at :data:`THRESHOLD`.
        choice: how ``chosen`` was chosen (a sentence; empty when not said).
    """

    labels: list[bool]
    probabilities: dict[str, list[float]]
    chosen: str
    ece: dict[str, float] = field(default_factory=dict)
    log_loss: dict[str, float] = field(default_factory=dict)
    threshold: dict[str, dict[str, Any]] = field(default_factory=dict)
    choice: str = ""

    def __post_init__(self) -> None:
        curves, labels = self.probabilities.items(), self.labels
        self.ece = self.ece or {k: expected_calibration_error(p, labels) for k, p in curves}
        self.log_loss = self.log_loss or {k: log_loss(p, labels) for k, p in curves}
        self.threshold = self.threshold or {k: threshold_figures(p, labels) for k, p in curves}

    def to_dict(self) -> dict[str, Any]:
        """The figures per method, the counts and the chosen method (JSON-ready)."""

        def rounded(figures: dict[str, Any]) -> dict[str, Any]:
            return {k: v if v is None else round(v, 4) for k, v in figures.items()}

        return {
            "pairs": len(self.labels),
            "relevant": sum(self.labels),
            "ece_heldout": {k: round(v, 4) for k, v in self.ece.items()},
            "log_loss_heldout": {k: round(v, 5) for k, v in self.log_loss.items()},
            f"threshold_{THRESHOLD}": {k: rounded(v) for k, v in self.threshold.items()},
            "chosen": self.chosen,
            "choice": self.choice,
        }

    def summary(self) -> str:
        """One line per method: its held-out ECE, log loss and figures at the threshold."""
        rows = []
        for name, ece in self.ece.items():
            cut = self.threshold.get(name) or {"kept": 0}
            kept = (
                f"precision {cut['precision']:.3f} vs mean p {cut['mean_probability']:.3f}"
                if cut["kept"]
                else "none kept"
            )
            loss = self.log_loss.get(name, float("nan"))
            rows.append(
                f"  {name:<9} ECE {ece:.4f}  log loss {loss:.4f}  p>={THRESHOLD}: "
                f"{cut['kept']} kept, {kept}"
            )
        head = (
            f"calibration on {len(self.labels)} pairs ({sum(self.labels)} relevant), held-out "
            f"ECE (10 bins), log loss and p >= {THRESHOLD}; using {self.chosen}"
            + (f" ({self.choice})" if self.choice else "")
            + ":"
        )
        return "\n".join([head, *rows])

    def plot(self, path: str | os.PathLike[str], title: str | None = None) -> Path:
        """The reliability diagram of every method into a PNG (needs matplotlib)."""
        return plot_reliability(self.probabilities, self.labels, path, title)


def plot_reliability(
    curves: Mapping[str, Sequence[float]],
    labels: Sequence[bool],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Draw share relevant against mean probability per bin, one line per method, into a PNG."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "the reliability diagram needs matplotlib: pip install 'bge-rerank-plugins[eval]'"
        ) from error
    figure = Figure(figsize=(6, 6), layout="constrained")
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, probabilities in curves.items():
        table = [row for row in reliability(probabilities, labels) if row[2]]
        ece = expected_calibration_error(probabilities, labels)
        ax.plot(
            [row[3] for row in table],
            [row[4] for row in table],
            marker="o",
            label=f"{name} (ECE {ece:.3f})",
        )
    ax.set_xlabel("mean predicted probability (10 equal-width bins)")
    ax.set_ylabel("share of relevant pairs")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(title or "Reliability of the reranker's scores")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out
