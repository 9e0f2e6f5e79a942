"""The maps from a reranker's raw logit to a probability of relevance, and their fits.

Platt scaling, beta calibration and isotonic regression (see :mod:`bge_rerank_plugins.calibration`
for when each is used). Every fit takes flat lists of raw scores and labels and returns a frozen,
JSON-friendly map; the logistic fits share one Newton solver (:func:`_fit_logistic`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BETA_RIDGE",
    "BetaCalibration",
    "IsotonicMap",
    "PlattScaling",
    "fit_beta",
    "fit_isotonic",
    "fit_platt",
    "sigmoid",
]

#: The ridge on beta calibration's two slopes (on the summed log loss): negligible next to
#: hundreds of pairs, enough to keep Newton's system solvable when every score sits on one side
#: of 0 and one slope is barely determined.
BETA_RIDGE = 1e-3


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
class BetaCalibration:
    """``p = sigmoid(a * log(s) - b * log(1 - s) + c)`` with ``s = sigmoid(logit)``, ``a, b >= 0``.

    Beta calibration: its log-odds grow with slope ``a`` far below 0 and ``b`` far above, so it
    can be steeper at the top than at the bottom (``a = b`` is Platt scaling). Non-decreasing.
    """

    a: float
    b: float
    c: float

    def __post_init__(self) -> None:
        if not (self.a >= 0 and self.b >= 0):
            raise ValueError(f"beta calibration needs a, b >= 0, got a={self.a}, b={self.b}")

    def __call__(self, raw: float) -> float:
        log_odds = self.c
        if self.a:  # a * log(s); skipped at a = 0 so a huge |raw| cannot give 0 * inf
            log_odds -= self.a * _softplus(-raw)
        if self.b:  # -b * log(1 - s)
            log_odds += self.b * _softplus(raw)
        return sigmoid(log_odds)


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


def _softplus(x: float) -> float:
    """``log(1 + e^x)`` without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _smoothed_targets(labels: Any) -> Any:
    """Platt's targets: ``(n+ + 1) / (n+ + 2)`` for relevant pairs, ``1 / (n- + 2)`` for the
    others, so a separable sample does not send a slope to infinity."""
    import numpy as np

    y = np.asarray(labels, dtype=bool)
    positives = int(y.sum())
    return np.where(y, (positives + 1) / (positives + 2), 1 / (len(y) - positives + 2))


def _fit_logistic(
    features: Any, targets: Any, start: Any, ridge: float = 0.0, iterations: int = 100
) -> Any:
    """Newton's method (IRLS) for ``sigmoid(features @ w)`` against soft ``targets``.

    ``ridge`` penalises ``ridge / 2 * |w|^2`` on every weight but the last (the intercept);
    each step is halved until the penalised log loss does not grow, so it never diverges.
    """
    import numpy as np

    x, t, w = np.asarray(features, dtype=np.float64), targets, np.array(start, dtype=np.float64)
    penalty = np.full(len(w), ridge)
    penalty[-1] = 0.0

    def loss(v: Any) -> float:
        z = x @ v  # log(1 + e^z) - t z, without overflow
        return float(np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 * np.sum(penalty * v * v))

    current = loss(w)
    for _ in range(iterations):
        p = np.exp(-np.logaddexp(0.0, -(x @ w)))  # sigmoid, without overflow
        weights = np.maximum(p * (1 - p), 1e-12)
        grad = x.T @ (p - t) + penalty * w
        hess = (x.T * weights) @ x + np.diag(penalty) + np.eye(len(w)) * 1e-9
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8:  # backtracking: a step never makes the loss worse
            new = loss(w - scale * step)
            if new <= current:
                break
            scale /= 2
        else:
            break
        w = w - scale * step
        done = current - new < 1e-10 * max(1.0, abs(current))
        current = new
        if done:
            break
    return w


def _prior_logit(labels: Any) -> float:
    positives = int(sum(bool(y) for y in labels))
    return math.log((positives + 1) / (len(labels) - positives + 1))


def fit_platt(raw: Sequence[float], labels: Sequence[bool], iterations: int = 100) -> PlattScaling:
    """Platt scaling fitted by Newton's method, with Platt's smoothed targets.

    >>> cal = fit_platt([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0], [0, 0, 1, 0, 1, 1])
    >>> cal.a > 0
    True
    """
    import numpy as np

    if len(raw) != len(labels) or not len(raw):
        raise ValueError("fit_platt needs one label per score and at least one score")
    x = np.asarray(raw, dtype=np.float64)
    features = np.stack([x, np.ones_like(x)], axis=1)
    start = [0.0, _prior_logit(labels)]  # the base rate: never saturated, Newton converges
    a, b = _fit_logistic(features, _smoothed_targets(labels), start, iterations=iterations)
    return PlattScaling(a=float(a), b=float(b))


def fit_beta(raw: Sequence[float], labels: Sequence[bool]) -> BetaCalibration:
    """Beta calibration (Kull, Silva Filho & Flach, 2017) fitted by Newton's method.

    A logistic regression of the label on ``log s`` and ``-log(1 - s)`` (``s = sigmoid(raw)``),
    with Platt's smoothed targets and a tiny ridge (:data:`BETA_RIDGE`). When a slope comes out
    negative (the map would not be monotone), it is fixed at 0 and the other refitted alone, as
    in the paper; if that one is negative too, only the base rate is left.

    >>> cal = fit_beta([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0], [0, 0, 0, 1, 0, 1, 1])
    >>> cal.a >= 0 and cal.b >= 0 and cal(-3.0) < cal(3.0)
    True
    """
    import numpy as np

    if len(raw) != len(labels) or not len(raw):
        raise ValueError("fit_beta needs one label per score and at least one score")
    x = np.asarray(raw, dtype=np.float64)
    # log s = -softplus(-x), -log(1 - s) = softplus(x): finite for any finite x
    columns = {"a": -np.logaddexp(0.0, -x), "b": np.logaddexp(0.0, x)}
    targets, prior = _smoothed_targets(labels), _prior_logit(labels)
    kept = ["a", "b"]
    while True:
        features = np.stack([columns[k] for k in kept] + [np.ones_like(x)], axis=1)
        w = _fit_logistic(features, targets, [0.0] * len(kept) + [prior], ridge=BETA_RIDGE)
        slopes = dict(zip(kept, map(float, w[:-1])))
        negative = [k for k, v in slopes.items() if v < 0]
        if not negative:
            return BetaCalibration(a=slopes.get("a", 0.0), b=slopes.get("b", 0.0), c=float(w[-1]))
        # both negative: no monotone two-slope map fits; one negative: drop it and refit
        kept = [] if len(negative) == len(kept) else [k for k in kept if k not in negative]


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
