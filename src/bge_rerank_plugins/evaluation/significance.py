"""Is reranking worth it here? A paired test over queries, and the verdict it supports.

:func:`paired_test` compares two systems evaluated on the same queries by their per-query
metric: the mean difference, a seeded **paired randomisation test** (each query's difference
has its sign flipped at random; the p-value is the share of sign assignments whose mean is at
least as far from 0 as the observed one, two-sided, with the +1 correction so it is never 0)
and a seeded **bootstrap** 95% confidence interval of the mean difference (queries resampled
with replacement, percentile interval). :func:`verdict` turns the test of a reranker against
the first stage, and its fused run, into one sentence.

>>> test = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
>>> test.difference, test.p_value
(0.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PairedTest", "Verdict", "paired_test", "verdict"]

#: The significance level of the verdict.
ALPHA = 0.05


@dataclass(frozen=True)
class PairedTest:
    """``system`` minus ``baseline`` on one metric, over the same ``n`` queries."""

    metric: str
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    permutations: int
    seed: int

    def describe(self) -> str:
        """e.g. ``"+0.059 nDCG@10, 95% CI [0.031, 0.088], p=0.0001"``."""
        family, _, k = self.metric.partition("@")
        label = {"ndcg": "nDCG", "mrr": "MRR", "hit": "Hit", "recall": "Recall"}.get(family, family)
        return (
            f"{self.difference:+.3f} {label}@{k}, 95% CI [{self.ci_low:.3f}, {self.ci_high:.3f}], "
            f"p={self.p_value:.2g}"
        )


def paired_test(
    system: Sequence[float],
    baseline: Sequence[float],
    *,
    metric: str = "ndcg@10",
    permutations: int = 10000,
    bootstrap: int = 10000,
    seed: int = 0,
) -> PairedTest:
    """The paired randomisation test and bootstrap CI of ``system - baseline`` (per query).

    >>> better = paired_test([0.9] * 30, [0.1] * 30)
    >>> better.p_value < 0.01, round(better.difference, 3)
    (True, 0.8)
    """
    import numpy as np

    if len(system) != len(baseline):
        raise ValueError(
            f"system and baseline need one value per query each, got {len(system)} and "
            f"{len(baseline)}"
        )
    diffs = np.asarray(system, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    n = len(diffs)
    if n == 0:
        return PairedTest(metric, 0.0, 0.0, 0.0, 1.0, 0, permutations, seed)
    rng = np.random.default_rng(seed)
    observed = abs(float(diffs.mean()))
    at_least, done = 0, 0
    while done < permutations:  # chunks keep the sign matrix small for many queries
        size = min(1000, permutations - done)
        signs = rng.choice((-1.0, 1.0), size=(size, n))
        means = np.abs(signs @ diffs) / n
        at_least += int(np.sum(means >= observed - 1e-12))
        done += size
    p_value = (at_least + 1) / (permutations + 1)
    samples = np.empty(bootstrap)
    for start in range(0, bootstrap, 1000):
        size = min(1000, bootstrap - start)
        picks = rng.integers(0, n, size=(size, n))
        samples[start : start + size] = diffs[picks].mean(axis=1)
    low, high = np.percentile(samples, [2.5, 97.5]) if bootstrap else (0.0, 0.0)
    return PairedTest(
        metric, float(diffs.mean()), float(low), float(high), float(p_value), n, permutations, seed
    )


@dataclass(frozen=True)
class Verdict:
    """Whether ``system`` beats the first stage, and what to do if not."""

    system: str
    first_stage: str
    test: PairedTest
    text: str
    fused: str | None = None
    fused_test: PairedTest | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        return out


def verdict(
    system: str,
    system_values: Sequence[float],
    first_stage: str,
    first_values: Sequence[float],
    *,
    metric: str = "ndcg@10",
    fused: str | None = None,
    fused_values: Sequence[float] | None = None,
    fusion_label: str | None = None,
    seed: int = 0,
) -> Verdict:
    """The verdict on ``system`` against the first stage (and its fused run, if any).

    >>> v = verdict("ce", [0.9] * 30, "BM25", [0.1] * 30)
    >>> v.text.startswith("ce: reranking helps here (+0.800 nDCG@10")
    True
    >>> verdict("ce", [0.5] * 30, "BM25", [0.5] * 30, fused_values=[0.4] * 30).text
    'ce: it does not (+0.000 nDCG@10, 95% CI [0.000, 0.000], p=1): skip it'
    """
    test = paired_test(system_values, first_values, metric=metric, seed=seed)
    fused_test = None
    if fused_values is not None:
        fused_test = paired_test(fused_values, first_values, metric=metric, seed=seed)
    how = f"fusion ({fusion_label})" if fusion_label else "fusion"
    if test.difference > 0 and test.p_value < ALPHA:
        text = f"{system}: reranking helps here ({test.describe()})"
        if fused_test is not None and fused_test.difference > test.difference:
            text += f"; {how} helps more ({fused_test.describe()})"
    else:
        text = f"{system}: it does not ({test.describe()}): "
        if fused_test is not None and fused_test.difference > 0:
            text += f"use {how} ({fused_test.describe()}) or skip it"
        elif fused_test is not None:
            text += "skip it"
        else:
            text += "skip it, or try fusion with the first stage (fusion='auto')"
    return Verdict(system, first_stage, test, text, fused, fused_test)
