"""How well scores read as probabilities: expected calibration error and a reliability diagram.

ECE uses 10 equal-width bins over [0, 1]: the mean over bins, weighted by the share of pairs in
each, of ``|mean predicted probability - share of relevant pairs|``. 0 is perfect.

>>> expected_calibration_error([0.05, 0.05, 0.95, 0.95], [False, False, True, True])
0.05
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CalibrationReport", "expected_calibration_error", "plot_reliability", "reliability"]

#: Bins of the ECE and of the reliability diagram.
BINS = 10


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


@dataclass
class CalibrationReport:
    """Held-out probabilities of each calibration method, and their ECE.

    Attributes:
        labels: whether each pair is relevant.
        probabilities: method name (``"sigmoid"``, ``"platt"``, ``"isotonic"``) -> the pair's
            probability, each fitted on the other folds (the sigmoid needs no fit).
        ece: method name -> its expected calibration error.
        chosen: the method stored in the calibration file.
    """

    labels: list[bool]
    probabilities: dict[str, list[float]]
    chosen: str
    ece: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ece:
            self.ece = {
                name: expected_calibration_error(probs, self.labels)
                for name, probs in self.probabilities.items()
            }

    def to_dict(self) -> dict[str, Any]:
        """The ECE figures, the counts and the chosen method (JSON-ready)."""
        return {
            "pairs": len(self.labels),
            "relevant": sum(self.labels),
            "ece_heldout": {k: round(v, 4) for k, v in self.ece.items()},
            "chosen": self.chosen,
        }

    def summary(self) -> str:
        """One line per method: its held-out ECE."""
        rows = [f"  {name:<9} ECE {value:.4f}" for name, value in self.ece.items()]
        head = (
            f"calibration on {len(self.labels)} pairs ({sum(self.labels)} relevant), "
            f"held-out ECE (10 bins); using {self.chosen}:"
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
