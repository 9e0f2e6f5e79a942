"""Evaluation results and how they are reported: a Markdown table, a JSON file and a PNG chart.

:class:`QueryResult` is one query's ranking, :class:`EvaluationResult` one system on one split,
:class:`Comparison` several systems on the same candidates (``to_markdown``, ``to_dict``,
``plot``, ``save``). Nothing here scores: the runner builds these objects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import DEFAULT_KS, METRIC_LABELS, METRICS, metric_order
from .significance import Verdict

__all__ = ["Comparison", "EvaluationResult", "QueryResult"]


@dataclass(frozen=True)
class QueryResult:
    """One query's outcome: the ranked ids (best first), their scores, its metrics."""

    qid: str
    ranking: tuple[str, ...]
    scores: tuple[float, ...] | None
    metrics: Mapping[str, float]


@dataclass
class EvaluationResult:
    """The outcome of one system (a reranker or the first-stage order) on one split.

    Attributes:
        name: the system's label.
        metrics: mean of each metric over the evaluated queries, e.g. ``{"ndcg@10": 0.68}``.
        per_query: one :class:`QueryResult` per evaluated query.
        num_queries: queries evaluated (in the averages).
        num_skipped: queries left out because the qrels give them no relevant document.
        num_pairs: (query, candidate) pairs scored.
        seconds: wall time of the scoring.
        kind: ``"first stage"``, ``"reranker"`` or ``"fused"`` (a reranker fused with the first
            stage; its rankings are held-out when the fusion was fitted by cross-validation).
    """

    name: str
    metrics: dict[str, float]
    per_query: list[QueryResult] = field(default_factory=list, repr=False)
    num_queries: int = 0
    num_skipped: int = 0
    num_pairs: int = 0
    seconds: float = 0.0
    kind: str = "reranker"

    def to_dict(self, per_query: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; ``per_query=True`` adds each query's ranking and metrics."""
        out: dict[str, Any] = {
            "name": self.name,
            "metrics": self.metrics,
            "num_queries": self.num_queries,
            "num_skipped": self.num_skipped,
            "num_pairs": self.num_pairs,
            "seconds": round(self.seconds, 3),
            "kind": self.kind,
        }
        if per_query:
            out["per_query"] = [
                {
                    "qid": r.qid,
                    "ranking": list(r.ranking),
                    "scores": None if r.scores is None else list(r.scores),
                    "metrics": dict(r.metrics),
                }
                for r in self.per_query
            ]
        return out


@dataclass
class Comparison:
    """Several systems evaluated on the same queries and candidates.

    Attributes:
        results: one :class:`EvaluationResult` per system, the first-stage order first.
        dataset, split: what was evaluated.
        top_k: candidates reranked per query.
        candidates: where the candidates came from (``"given"`` or ``"bm25"``).
        ks: the metric cut-offs.
        verdicts: per reranker, whether it beats the first stage (a paired test over queries;
            :mod:`~bge_rerank_plugins.evaluation.significance`).
    """

    results: list[EvaluationResult]
    dataset: str
    split: str
    top_k: int | None
    candidates: str
    ks: tuple[int, ...] = DEFAULT_KS
    verdicts: list[Verdict] = field(default_factory=list)

    def __getitem__(self, name: str) -> EvaluationResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no system named {name!r}; have {[r.name for r in self.results]}")

    def _top(self) -> str:
        return f"top {self.top_k if self.top_k is not None else 'all'} {self.candidates} candidates"

    def to_markdown(self, digits: int = 3) -> str:
        """A Markdown table: one row per metric, one column per system; best value in bold."""
        names = [r.name for r in self.results]
        lines = [
            "| metric | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for key in metric_order(self.ks):
            family, k = key.split("@")
            values = [r.metrics.get(key, float("nan")) for r in self.results]
            best = max(values)
            cells = [
                f"**{v:.{digits}f}**" if len(values) > 1 and v == best else f"{v:.{digits}f}"
                for v in values
            ]
            lines.append(f"| {METRIC_LABELS[family]}@{k} | " + " | ".join(cells) + " |")
        first = self.results[0] if self.results else None
        if first is not None:
            lines.append("")
            lines.append(
                f"{Path(self.dataset).name} / {self.split}: {first.num_queries} queries "
                f"({first.num_skipped} without a relevant document skipped), {self._top()}."
            )
        if self.verdicts:
            lines.append("")
            lines.extend(f"- {v.text}" for v in self.verdicts)
        return "\n".join(lines)

    def to_dict(self, per_query: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (``per_query=True`` adds each query's ranking)."""
        return {
            "dataset": str(self.dataset),
            "split": self.split,
            "top_k": self.top_k,
            "candidates": self.candidates,
            "ks": list(self.ks),
            "systems": [r.to_dict(per_query) for r in self.results],
            "verdicts": [v.to_dict() for v in self.verdicts],
        }

    def plot(self, path: str | os.PathLike[str], title: str | None = None) -> Path:
        """Draw the metrics against K, one line per system, into a PNG (needs matplotlib)."""
        try:
            from matplotlib.figure import Figure
        except ImportError as error:
            raise ImportError(
                "the chart needs matplotlib: pip install 'bge-rerank-plugins[eval]'"
            ) from error
        figure = Figure(figsize=(10, 7), layout="constrained")
        axes = figure.subplots(2, 2, sharex=True)
        for ax, family in zip(axes.flat, METRICS):
            for result in self.results:
                ys = [result.metrics[f"{family}@{k}"] for k in self.ks]
                unscored = bool(result.per_query) and result.per_query[0].scores is None
                if result.kind == "fused":
                    style = ":"
                else:
                    style = "--" if result.kind == "first stage" or unscored else "-"
                ax.plot(self.ks, ys, style, marker="o", label=result.name)
            ax.set_title(f"{METRIC_LABELS[family]}@K")
            ax.set_xticks(list(self.ks))
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        for ax in axes[1]:
            ax.set_xlabel("K")
        axes.flat[0].legend(loc="lower right", fontsize="small")
        figure.suptitle(
            title or f"{Path(self.dataset).name} / {self.split}: reranking {self._top()}"
        )
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=110)
        return out

    def save(self, out_dir: str | os.PathLike[str], chart: bool = True) -> dict[str, Path]:
        """Write ``table.md``, ``metrics.json`` (with per-query rankings) and ``chart.png``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"table": out / "table.md", "metrics": out / "metrics.json"}
        paths["table"].write_text(self.to_markdown() + "\n", encoding="utf-8")
        paths["metrics"].write_text(
            json.dumps(self.to_dict(per_query=True), indent=1, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        if chart:
            paths["chart"] = self.plot(out / "chart.png")
        return paths
