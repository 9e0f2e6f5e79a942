"""Reranking evaluation on BEIR-style folders: Hit@K, MRR@K, nDCG@K and Recall@K.

Each query's first-stage candidates (the given ``candidates/<split>.jsonl`` lists, or BM25
top-k computed with ``bm25s``) are cut to ``top_k``, scored by a reranker in ONE
``scorer.score_many(...)`` call for the whole split, re-sorted, and compared to the qrels. The
first-stage order itself is evaluated next to the rerankers.

Main entry points (public; their signatures are kept stable for users' scripts, the
``bge-rerank evaluate`` command and the examples)::

    evaluate_reranker(scorer, dataset, split="dev", *, top_k=30, max_queries=None,
                      ks=(1, 3, 5, 10), candidates="auto", template=None,
                      relevance_threshold=1, name=None, show_progress_bar=None)
        -> EvaluationResult  # .metrics {"ndcg@10": 0.68, ...}, .per_query [QueryResult]

    evaluate_models({"base": dir_a, "tuned": dir_b}, dataset, split="dev", *, top_k=30, ...)
        -> Comparison        # .results [first stage, base, tuned], .to_markdown(), .save(dir)
    evaluate_models(..., fusion="auto")   # + "<label> + fusion (CV)" columns, held-out
        -> Comparison        # .verdicts: reranked vs first stage, paired test over queries

    fit_fusion(scorer, dataset, split="dev", *, top_k=30, method="auto", folds=5, k=10, seed=0)
        -> FitResult         # .fusion (held-out nDCG@10), .calibration, .report; .save(model_dir)

Validation during fine-tuning does not go through these functions: the fine-tuning engine uses
sentence-transformers' ``CrossEncoderRerankingEvaluator``. Evaluate the saved model here to get
figures comparable with the base model's.

``scorer`` is a :class:`~bge_rerank_plugins.CrossEncoderScorer`, a model id or directory (a
scorer is built for it), ``None`` (the first-stage order), or any object with a
``score_many(queries, candidates) -> list[list[float]]`` method (e.g. a wrapper around another
model). ``dataset`` is a loaded :class:`~bge_rerank_plugins.beir.BeirDataset` or a folder path.

The package's modules, one job each: :mod:`~bge_rerank_plugins.evaluation.metrics`
(the metric functions), :mod:`~bge_rerank_plugins.evaluation.candidates` (the first stage),
:mod:`~bge_rerank_plugins.evaluation.scoring` (the one ``score_many`` call),
:mod:`~bge_rerank_plugins.evaluation.aggregate` (rankings -> means),
:mod:`~bge_rerank_plugins.evaluation.runner` (the two entry points),
:mod:`~bge_rerank_plugins.evaluation.report` (the result types, Markdown, JSON and PNG),
:mod:`~bge_rerank_plugins.evaluation.fused` (a reranker's fused run),
:mod:`~bge_rerank_plugins.evaluation.fusion_fit` (the fusion weight by cross-validation),
:mod:`~bge_rerank_plugins.evaluation.significance` (paired test and verdict),
:mod:`~bge_rerank_plugins.evaluation.calibration_report` (ECE, reliability diagram) and
:mod:`~bge_rerank_plugins.evaluation.fit` (:func:`fit_fusion`: fusion + calibration from
labels). Import from ``bge_rerank_plugins.evaluation``; the module paths are internal.

Metric conventions (also in ``docs/evaluation.md``):

* A document is *relevant* when its qrels grade is >= ``relevance_threshold`` (default 1);
  documents without a qrels row have grade 0.
* ``hit@k``: 1 if a relevant document is in the top k, else 0.
* ``mrr@k``: 1 / rank of the first relevant document in the top k, else 0.
* ``recall@k``: relevant documents in the top k / all relevant documents of the query in the
  qrels (also those the first stage missed).
* ``ndcg@k``: DCG@k / IDCG@k with gain = grade (linear, as ``trec_eval``'s ``ndcg_cut``) and
  discount 1 / log2(rank + 1); the ideal ranking sorts *all* the query's judged grades.
* A query with no relevant document in the qrels is left out of every average and counted in
  ``EvaluationResult.num_skipped``; a query whose candidates miss all its relevant documents
  scores 0.
* Equal reranker scores keep the first-stage order (a stable sort).

Example:
    >>> from bge_rerank_plugins.evaluation import ndcg_at_k
    >>> round(ndcg_at_k(["d2", "d1"], {"d1": 2, "d2": 1}, k=2), 4)
    0.8597
"""

from __future__ import annotations

# The names marked "X as X" (fusion, calibration, the verdict; METRICS, Grades) are importable
# from here and kept out of __all__, which pins the evaluation API's first set of names.
from .calibration_report import CalibrationReport as CalibrationReport
from .calibration_report import expected_calibration_error as expected_calibration_error
from .calibration_report import plot_reliability as plot_reliability
from .candidates import EvalQuery, prepare_queries
from .fit import FitResult as FitResult
from .fit import LabelledQuery as LabelledQuery
from .fit import fit_calibration as fit_calibration
from .fit import fit_fusion as fit_fusion
from .fusion_fit import FusionFit as FusionFit
from .fusion_fit import FusionSample as FusionSample
from .fusion_fit import cross_validate_fusion as cross_validate_fusion
from .metrics import (
    DEFAULT_KS,
    hit_at_k,
    mrr_at_k,
    ndcg_at_k,
    query_metrics,
    recall_at_k,
)
from .metrics import METRICS as METRICS  # importable here, as from the former module
from .metrics import Grades as Grades  # (the same; neither is in __all__)
from .report import Comparison, EvaluationResult, QueryResult
from .runner import evaluate_models, evaluate_reranker
from .significance import PairedTest as PairedTest
from .significance import Verdict as Verdict
from .significance import paired_test as paired_test
from .significance import verdict as verdict

__all__ = [
    "DEFAULT_KS",
    "Comparison",
    "EvalQuery",
    "EvaluationResult",
    "QueryResult",
    "evaluate_models",
    "evaluate_reranker",
    "hit_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "prepare_queries",
    "query_metrics",
    "recall_at_k",
]
