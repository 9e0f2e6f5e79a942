"""Fusing a reranker's scores with the first stage's: reciprocal-rank fusion and a convex blend.

A reranker can make a strong first stage (BM25, a dense retriever, a hybrid) worse, above all
out of its domain. Fusing keeps part of the first stage's judgement. Two methods, both pure
functions over one query's candidate list:

* ``"rrf"`` (reciprocal-rank fusion): ``w / (rrf_k + rank_reranker) + (1 - w) / (rrf_k +
  rank_first_stage)``, ranks 1-based. Only the orders are used, so it needs no score scale;
  ``w = 0.5`` is the classic, unweighted RRF (up to a factor 2).
* ``"blend"``: ``w * norm(reranker) + (1 - w) * norm(first_stage)``, each list normalised per
  query. The default normalisation is **min-max** to [0, 1]: both terms then span the same
  range in every query, so the weight means the same thing from query to query and from one
  first stage to another (BM25 scores are unbounded and their scale depends on the query's
  length; a reranker's logits are not). ``"zscore"`` (mean 0, standard deviation 1) is offered
  too: it is less moved by one outlying score, but a query's best candidate can land anywhere.
  A constant list normalises to 0.5 (min-max) or 0 (z-score): it carries no preference.

``w`` (``weight``) is the reranker's share: ``1`` is the reranker's order, ``0`` the first
stage's. The reranker's scores are its **raw logits** (the scorer passes them; the sigmoid
would change min-max normalised values). When only the first stage's order is known (no
scores), the blend uses the negated rank as its score, i.e. a linear decay over the list.
Ties of the fused score keep the first-stage order.

>>> config = FusionConfig(method="blend", weight=0.5)
>>> fuse([0.0, 4.0, 2.0], [10.0, 0.0, 5.0], config)
[0.5, 0.5, 0.5]
>>> fused_order([0.0, 4.0, 2.0], [10.0, 0.0, 5.0], config)
[0, 2, 1]
>>> fused_order([0.0, 4.0, 2.0], None, FusionConfig(method="rrf", weight=0.9))
[1, 2, 0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "FUSION_METHODS",
    "NORMALIZATIONS",
    "FusionConfig",
    "fuse",
    "fused_order",
    "minmax",
    "ranks",
    "zscore",
]

#: The values of ``FusionConfig.method``.
FUSION_METHODS: tuple[str, ...] = ("rrf", "blend")
#: The values of ``FusionConfig.normalization`` (used by ``"blend"`` only).
NORMALIZATIONS: tuple[str, ...] = ("minmax", "zscore")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class FusionConfig:
    """How a reranker's scores are fused with the first stage's (frozen, hashable).

    Attributes:
        method: ``"rrf"`` (reciprocal-rank fusion) or ``"blend"`` (convex blend of normalised
            scores).
        weight: the reranker's share, in [0, 1] (1: the reranker's order, 0: the first stage's).
        rrf_k: the constant of reciprocal-rank fusion (> 0; 60 as in Cormack et al., 2009).
        normalization: ``"minmax"`` (default) or ``"zscore"``, per query, for ``"blend"``.

    >>> FusionConfig(method="rrf", weight=0.7).to_dict()
    {'method': 'rrf', 'weight': 0.7, 'rrf_k': 60.0, 'normalization': 'minmax'}
    >>> FusionConfig(weight=1.5)
    Traceback (most recent call last):
    ...
    ValueError: weight must be within [0, 1] (the reranker's share), got 1.5
    """

    method: str = "blend"
    weight: float = 0.5
    rrf_k: float = 60.0
    normalization: str = "minmax"

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"method must be one of {FUSION_METHODS}, got {self.method!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        weight = _number(self.weight, "weight")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be within [0, 1] (the reranker's share), got {weight}")
        rrf_k = _number(self.rrf_k, "rrf_k")
        if rrf_k <= 0:
            raise ValueError(f"rrf_k must be > 0, got {rrf_k}")
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "rrf_k", rrf_k)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``fusion`` entry of the calibration file)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionConfig:
        """The config a :meth:`to_dict` dict describes (unknown keys are a ValueError)."""
        unknown = set(data) - {"method", "weight", "rrf_k", "normalization"}
        if unknown:
            raise ValueError(f"unknown fusion settings {sorted(unknown)}")
        return cls(**data)

    def describe(self) -> str:
        """A short label such as ``"blend w=0.70"`` or ``"rrf w=0.50 k=60"``."""
        if self.method == "rrf":
            return f"rrf w={self.weight:.2f} k={self.rrf_k:g}"
        extra = "" if self.normalization == "minmax" else f" {self.normalization}"
        return f"blend w={self.weight:.2f}{extra}"


def _floats(values: Sequence[float], name: str) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    out = [_number(v, f"{name}[{i}]") for i, v in enumerate(values)]
    return out


def minmax(scores: Sequence[float]) -> list[float]:
    """``scores`` rescaled to [0, 1] (a constant list becomes all 0.5).

    >>> minmax([2.0, 4.0, 3.0])
    [0.0, 1.0, 0.5]
    """
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high - low <= 0:
        return [0.5] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def zscore(scores: Sequence[float]) -> list[float]:
    """``scores`` minus their mean, over their (population) standard deviation; constant: 0.

    >>> zscore([1.0, 3.0])
    [-1.0, 1.0]
    """
    if not scores:
        return []
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    if std <= 0:
        return [0.0] * len(scores)
    return [(s - mean) / std for s in scores]


def ranks(scores: Sequence[float]) -> list[int]:
    """The 1-based rank of each score (best first; equal scores keep input order).

    >>> ranks([0.2, 0.9, 0.2])
    [2, 1, 3]
    """
    out = [0] * len(scores)
    for rank, i in enumerate(sorted(range(len(scores)), key=lambda j: (-scores[j], j)), 1):
        out[i] = rank
    return out


def _first_stage_ranks(
    n: int, first_stage_scores: Sequence[float] | None, first_stage_ranks: Sequence[int] | None
) -> tuple[list[int], list[float] | None]:
    if first_stage_scores is not None and first_stage_ranks is not None:
        raise ValueError("give first_stage_scores or first_stage_ranks, not both")
    if first_stage_scores is not None:
        scores = _floats(first_stage_scores, "first_stage_scores")
        if len(scores) != n:
            raise ValueError(
                f"first_stage_scores has {len(scores)} values for {n} reranker scores: one "
                "first-stage score per candidate, in the same order"
            )
        return ranks(scores), scores
    if first_stage_ranks is None:
        return list(range(1, n + 1)), None  # the input order is the first stage's
    given = [int(_number(r, f"first_stage_ranks[{i}]")) for i, r in enumerate(first_stage_ranks)]
    if sorted(given) != list(range(1, n + 1)):
        raise ValueError(
            f"first_stage_ranks must be a permutation of 1..{n} (1 = the first stage's best)"
        )
    return given, None


def fuse(
    reranker_scores: Sequence[float],
    first_stage_scores: Sequence[float] | None = None,
    config: FusionConfig | None = None,
    *,
    first_stage_ranks: Sequence[int] | None = None,
) -> list[float]:
    """The fused score of each candidate, in input order (higher is better).

    Args:
        reranker_scores: the reranker's raw scores (logits), one per candidate.
        first_stage_scores: the first stage's scores (higher is better), same order; ``None``
            with ``first_stage_ranks=None``: the input order is the first stage's order.
        config: the method and weight (default ``FusionConfig()``: min-max blend, w = 0.5).
        first_stage_ranks: the first stage's 1-based ranks instead of its scores.

    >>> rrf = FusionConfig(method="rrf", weight=0.8, rrf_k=1)
    >>> [round(s, 4) for s in fuse([1.0, 3.0], None, rrf)]
    [0.3667, 0.4667]
    """
    config = FusionConfig() if config is None else config
    if not isinstance(config, FusionConfig):
        raise TypeError(f"config must be a FusionConfig, got {type(config).__name__}")
    reranker = _floats(reranker_scores, "reranker_scores")
    fs_ranks, fs_scores = _first_stage_ranks(len(reranker), first_stage_scores, first_stage_ranks)
    w = config.weight
    if config.method == "rrf":
        k = config.rrf_k
        return [w / (k + r) + (1 - w) / (k + f) for r, f in zip(ranks(reranker), fs_ranks)]
    norm = minmax if config.normalization == "minmax" else zscore
    first = fs_scores if fs_scores is not None else [-float(r) for r in fs_ranks]
    return [w * a + (1 - w) * b for a, b in zip(norm(reranker), norm(first))]


def fused_order(
    reranker_scores: Sequence[float],
    first_stage_scores: Sequence[float] | None = None,
    config: FusionConfig | None = None,
    *,
    first_stage_ranks: Sequence[int] | None = None,
) -> list[int]:
    """Candidate indices best first by :func:`fuse`; ties keep the first-stage order."""
    fused = fuse(reranker_scores, first_stage_scores, config, first_stage_ranks=first_stage_ranks)
    fs_ranks, _ = _first_stage_ranks(len(fused), first_stage_scores, first_stage_ranks)
    return sorted(range(len(fused)), key=lambda i: (-fused[i], fs_ranks[i]))
