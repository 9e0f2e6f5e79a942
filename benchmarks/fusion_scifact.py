"""Issue 23's measurement: reranking vs the first stage, learnt fusion, verdicts, calibration.

Command lines (from the repository root)::

    # the measurement, with a fine-tuned reranker (GPU if there is one, else CPU)
    python benchmarks/fusion_scifact.py --model models/minilm-scifact \
        --data-dir ../shared/data --max-length 256 --top-k 30 --folds 5 --seed 0 --out runs/fusion

    # a quick end-to-end try on a busy CPU: the untrained MiniLM cross-encoder, 15 queries
    # (build it once: python -c "from bge_rerank_plugins.minilm import
    #  build_minilm_cross_encoder as b; b('/tmp/minilm-ce')")
    OMP_NUM_THREADS=1 python benchmarks/fusion_scifact.py --model /tmp/minilm-ce \
        --max-queries 15 --encoder-max-length 128

What is measured (nDCG@10; every fused figure is held-out: each query is fused with the
setting chosen by ``--folds``-fold cross-validation on the *other* queries):

1. SciFact dev, BM25 top ``--top-k`` (the ``ranked`` lists of ``candidates/dev.jsonl``):
   BM25, the reranker, the fused run, the verdict (paired randomisation test over queries).
   This goes through the library's own entry point, ``evaluate_models(..., fusion="auto")``.
   The fusion knows the BM25 *ranks* only: the files give no BM25 scores, and the scores of
   this package's ``Bm25Index`` do not follow those lists' order (another BM25 produced them),
   so attaching them would fuse with a different first stage from the one in the table.
2. SciFact dev, the MiniLM bi-encoder's cosine top ``--top-k`` (``minilm_encoder_dir()``,
   corpus rendered ``title + "\\n" + text``): the same columns; the fusion gets the cosine
   scores (``EvalQuery.first_stage_scores``). ``evaluate_models`` takes no prepared queries,
   so this run composes the same steps (``evaluation.fused.reranked_and_fused`` and
   ``verdicts_for``). Corpus embeddings are cached as ``.npy`` in ``--out``.
3. Cranfield, all queries (split ``all``), the given BM25 lists: as 1.
4. Calibration on SciFact dev (the BM25 candidates of 1.): the queries are split in two by a
   seeded shuffle; Platt (and isotonic) are fitted on one half with ``fit_calibration`` and
   measured on the other: ECE (10 bins) of each, and with ``score_threshold=0.5`` on the
   calibrated probabilities the precision of the kept pairs against their mean probability.
   The reliability diagram of the measured half goes to ``--out``.

Each (query, passage) pair is scored once (raw logits), whatever the number of runs that use
it. The tables are printed as Markdown, and written with all figures to ``--out``
(``fusion_scifact.md``, ``fusion_scifact.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

logger = logging.getLogger("fusion_scifact")

KS = (1, 3, 5, 10)
METRIC = "ndcg@10"
THRESHOLD = 0.5


class RawScores:
    """A scorer wrapper that asks for raw logits and remembers them, pair by pair.

    The evaluation code calls ``score_many(..., normalize=False)`` (this wrapper has no
    ``normalize`` attribute, so the reranker's column is ranked by the logits: the sigmoid's
    order, without its ties at saturation). Pairs already scored are not scored again, so the
    dense run only scores the candidates BM25 did not bring, and the calibration reuses them.
    """

    def __init__(self, scorer: Any, label: str) -> None:
        self.scorer = scorer
        self.model_name = label
        self.template = scorer.template
        self.pairs_scored = 0
        self._raw: dict[tuple[str, str], float] = {}

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
                if (query, passage) not in self._raw:
                    todo.setdefault(query, {})[passage] = None
        if todo:
            lists = [list(p) for p in todo.values()]
            got = self.scorer.score_many(
                list(todo), lists, normalize=False, show_progress_bar=show_progress_bar
            )
            for (query, passages), scores in zip(zip(todo, lists), got):
                self._raw.update({(query, p): float(s) for p, s in zip(passages, scores)})
                self.pairs_scored += len(passages)
        return [[self._raw[(q, p)] for p in ps] for q, ps in zip(queries, candidates)]

    def lookup(self, data: Any, query: Any) -> list[float]:
        """The raw scores of an ``EvalQuery``'s candidates (scored earlier)."""
        from bge_rerank_plugins.fields import as_template

        template = as_template(self.template)
        texts = [template.render(data.corpus[d]) for d in query.doc_ids]
        return self.score_many([query.text], [texts])[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="reranker model folder (or Hub id)")
    parser.add_argument("--data-dir", default="../shared/data", type=Path)
    parser.add_argument("--max-length", type=int, default=256, help="reranker max tokens")
    parser.add_argument("--encoder-max-length", type=int, default=256, help="bi-encoder tokens")
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--max-queries", type=int, default=None, help="first N queries only")
    parser.add_argument("--out", type=Path, default=Path("runs/fusion"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="e.g. cuda or cpu (default: auto)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--skip-cranfield", action="store_true")
    parser.add_argument("--skip-dense", action="store_true")
    return parser.parse_args(argv)


# ------------------------------------------------------------------ first stages
def encode_corpus(data: Any, out: Path, max_length: int, device: str | None) -> tuple[Any, Any]:
    """(ids, unit-norm embeddings) of the corpus, cached as .npy in ``out``."""
    import numpy as np

    stem = out / f"{data.path.name}_corpus_minilm_len{max_length}"
    ids = list(data.corpus)
    npy, ids_file = stem.with_suffix(".npy"), stem.with_suffix(".ids.json")
    if npy.is_file() and ids_file.is_file():
        if json.loads(ids_file.read_text(encoding="utf-8")) == ids:
            logger.info("corpus embeddings from the cache %s", npy)
            return ids, np.load(npy)
        logger.warning("%s was made for another corpus; encoding again", ids_file)
    model = bi_encoder(max_length, device)
    texts = [f"{d.title}\n{d.text}".strip() for d in data.corpus.values()]
    start = time.perf_counter()
    emb = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    logger.info("encoded %d documents in %.0f s", len(texts), time.perf_counter() - start)
    out.mkdir(parents=True, exist_ok=True)
    np.save(npy, emb.astype(np.float32))
    ids_file.write_text(json.dumps(ids), encoding="utf-8")
    return ids, emb


_ENCODERS: dict[int, Any] = {}


def bi_encoder(max_length: int, device: str | None) -> Any:
    if max_length not in _ENCODERS:
        from sentence_transformers import SentenceTransformer

        from bge_rerank_plugins.minilm import minilm_encoder_dir

        model = SentenceTransformer(str(minilm_encoder_dir()), device=device)
        model.max_seq_length = max_length
        _ENCODERS[max_length] = model
    return _ENCODERS[max_length]


def dense_queries(data: Any, selected: Sequence[Any], args: argparse.Namespace) -> list[Any]:
    """The ``selected`` queries with the bi-encoder's cosine top-k and its cosine scores."""
    import numpy as np

    from bge_rerank_plugins.evaluation import EvalQuery

    ids, emb = encode_corpus(data, args.out, args.encoder_max_length, args.device)
    model = bi_encoder(args.encoder_max_length, args.device)
    texts = [q.text for q in selected]
    qemb = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    out = []
    for query, vector in zip(selected, qemb):
        cos = emb @ vector
        top = np.argsort(-cos, kind="stable")[: args.top_k]
        doc_ids = tuple(ids[i] for i in top)
        scores = tuple(float(cos[i]) for i in top)
        out.append(EvalQuery(query.qid, query.text, doc_ids, query.grades, scores))
    return out


# ------------------------------------------------------------------ runs
def given_comparison(raw: RawScores, data: Any, args: argparse.Namespace) -> Any:
    """First stage / reranker / fused (CV) / verdict through ``evaluate_models``."""
    from bge_rerank_plugins.evaluation import evaluate_models

    return evaluate_models(
        {raw.model_name: raw},
        data,
        data.split,
        top_k=args.top_k,
        max_queries=args.max_queries,
        ks=KS,
        candidates="given",
        fusion="auto",
        folds=args.folds,
        seed=args.seed,
    )


def prepared_comparison(
    raw: RawScores,
    data: Any,
    queries: Sequence[Any],
    first_stage: str,
    skipped: int,
    args: argparse.Namespace,
) -> Any:
    """As ``evaluate_models(..., fusion="auto")``, on queries prepared here (dense lists)."""
    from bge_rerank_plugins.evaluation import Comparison, evaluate_reranker
    from bge_rerank_plugins.evaluation.fused import reranked_and_fused, verdicts_for

    first = evaluate_reranker(None, data, ks=KS, queries=queries, name=first_stage)
    first.kind, first.num_skipped = "first stage", skipped
    result, fused, fit = reranked_and_fused(
        raw, raw.model_name, data, queries, "auto", ks=KS, relevance_threshold=1,
        template=None, show_progress_bar=None, folds=args.folds, seed=args.seed,
    )  # fmt: skip
    results = [first, result] + ([fused] if fused is not None else [])
    comparison = Comparison(results, str(data.path), data.split, args.top_k, first_stage, KS)
    label = f"CV; {fit.config.describe()}" if fit is not None else None
    comparison.verdicts = verdicts_for(first, [(result, fused, label)], KS, args.seed)
    return comparison


def fusion_fit(raw: RawScores, data: Any, queries: Sequence[Any], args, with_scores=True) -> Any:
    """The ``FusionFit`` behind a fused column (same samples, folds and seed), for its
    settings; ``with_scores=False``: the fusion on the first stage's ranks only."""
    from bge_rerank_plugins.evaluation import FusionSample, cross_validate_fusion

    samples = [
        FusionSample(
            q.qid,
            q.doc_ids,
            tuple(raw.lookup(data, q)),
            q.first_stage_scores if with_scores else None,
            q.grades,
        )
        for q in queries
    ]
    return cross_validate_fusion(samples, method="auto", folds=args.folds, seed=args.seed)


def summary_row(name: str, comparison: Any, fit: Any, target: str) -> dict[str, Any]:
    first, reranker = comparison.results[0], comparison.results[1]
    fused = comparison.results[2] if len(comparison.results) > 2 else None
    values = {
        "setting": name,
        "queries": first.num_queries,
        "first_stage": first.metrics[METRIC],
        "reranker": reranker.metrics[METRIC],
        "fused": None if fused is None else fused.metrics[METRIC],
        "fusion": fit.config.describe(),
        "fold_settings": [c.describe() for c in fit.fold_configs],
        "fused_in_sample": fit.fitted,
        "verdict": comparison.verdicts[0].text if comparison.verdicts else "",
        "target": target,
    }
    if fused is not None and abs(fit.heldout - values["fused"]) > 1e-9:
        logger.warning("%s: fused column %.4f != FusionFit.heldout %.4f", name, values["fused"],
                       fit.heldout)  # fmt: skip
    best = max(values["first_stage"], values["reranker"])
    if fused is None:
        values["met"] = False
    elif target == "fused >= max + 0.01":
        values["met"] = values["fused"] >= best + 0.01
    else:
        values["met"] = values["fused"] >= values["first_stage"] - 0.005
    return values


def summary_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| setting | queries | first stage | reranker | fused (CV, held-out) | fusion (all "
        "queries) | target | met |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        fused = "n/a" if r["fused"] is None else f"{r['fused']:.4f}"
        lines.append(
            f"| {r['setting']} | {r['queries']} | {r['first_stage']:.4f} | {r['reranker']:.4f} "
            f"| {fused} | {r['fusion']} | {r['target']} | {'yes' if r['met'] else 'NO'} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ calibration
def calibration_figures(
    raw: RawScores, data: Any, queries: Sequence[Any], args: argparse.Namespace
) -> tuple[str, dict[str, Any]]:
    """Fit on a seeded half of the queries, measure ECE and the 0.5 threshold on the other."""
    from bge_rerank_plugins.calibration import convert_scores, fit_isotonic, sigmoid
    from bge_rerank_plugins.evaluation import (
        expected_calibration_error,
        fit_calibration,
        plot_reliability,
    )

    order = [q for q in queries if q.doc_ids]
    random.Random(args.seed).shuffle(order)
    half = len(order) // 2
    fit_q, test_q = order[:half], order[half:]

    def pairs(group: Sequence[Any]) -> tuple[list[list[float]], list[list[bool]]]:
        scores = [raw.lookup(data, q) for q in group]
        labels = [[q.grades.get(d, 0) >= 1 for d in q.doc_ids] for q in group]
        return scores, labels

    fit_x, fit_y = pairs(fit_q)
    test_x, test_y = pairs(test_q)
    calibration, report = fit_calibration(fit_x, fit_y, folds=args.folds, seed=args.seed)
    flat_x = [x for xs in test_x for x in xs]
    labels = [y for ys in test_y for y in ys]
    curves = {
        "sigmoid (uncalibrated)": [sigmoid(x) for x in flat_x],
        "platt": [calibration.platt(x) for x in flat_x],
    }
    isotonic_note = "fitted by fit_calibration"
    isotonic = calibration.isotonic
    if isotonic is None:  # below the library's data minimum: fitted here, for the figure only
        isotonic = fit_isotonic([x for xs in fit_x for x in xs], [y for ys in fit_y for y in ys])
        isotonic_note = "too few pairs for fit_calibration: fitted here, not used by the library"
    curves["isotonic"] = [isotonic(x) for x in flat_x]
    chosen = f"calibrated ({calibration.method})"
    curves[chosen] = convert_scores(flat_x, "calibrated", calibration)
    rows, figures = [], {}
    for name, probs in curves.items():
        ece = expected_calibration_error(probs, labels)
        kept = [(p, y) for p, y in zip(probs, labels) if p >= THRESHOLD]
        precision = sum(y for _, y in kept) / len(kept) if kept else float("nan")
        mean_p = sum(p for p, _ in kept) / len(kept) if kept else float("nan")
        gap = abs(precision - mean_p) if kept else float("nan")
        figures[name] = {"ece": ece, "kept": len(kept), "precision": precision, "mean_p": mean_p}
        met = ""
        if name == chosen:
            gap_met = "n/a (none kept)" if not kept else ("yes" if gap <= 0.1 else "NO")
            met = f"ECE {'yes' if ece <= 0.05 else 'NO'}, gap {gap_met}"
        cells = [f"{v:.3f}" if kept else "-" for v in (precision, mean_p, gap)]
        rows.append(f"| {name} | {ece:.4f} | {len(kept)} | " + " | ".join(cells) + f" | {met} |")
    png = args.out / "reliability_scifact_dev.png"
    try:
        plot_reliability(curves, labels, png, title="SciFact dev, held-out half (BM25 top-k)")
    except ImportError as error:
        logger.warning("no reliability diagram: %s", error)
        png = None
    head = [
        f"Calibration on SciFact dev, BM25 top {args.top_k}: fitted on {len(fit_q)} queries "
        f"({sum(map(len, fit_y))} pairs, {sum(map(sum, fit_y))} relevant), measured on the other "
        f"{len(test_q)} ({len(labels)} pairs, {sum(labels)} relevant); split seed {args.seed}. "
        f"Isotonic: {isotonic_note}. Threshold {THRESHOLD} on the probabilities.",
        "",
        "| scores | ECE (10 bins) | kept | precision of kept | mean prob. of kept | gap "
        "| target (ECE <= 0.05, gap <= 0.1) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    extra = {
        "fit_queries": len(fit_q),
        "test_queries": len(test_q),
        "test_pairs": len(labels),
        "test_relevant": sum(labels),
        "method": calibration.method,
        "platt": {"a": calibration.platt.a, "b": calibration.platt.b},
        "fit_report": report.to_dict(),
        "isotonic": isotonic_note,
        "curves": figures,
        "reliability_png": None if png is None else str(png),
    }
    return "\n".join(head + rows), extra


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    from bge_rerank_plugins import CrossEncoderScorer
    from bge_rerank_plugins.beir import load_beir
    from bge_rerank_plugins.evaluation import prepare_queries

    args.out.mkdir(parents=True, exist_ok=True)
    scorer = CrossEncoderScorer(
        args.model, max_length=args.max_length, device=args.device, batch_size=args.batch_size
    )
    raw = RawScores(scorer, Path(str(args.model)).name or str(args.model))
    sections: list[str] = []
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {"model": str(args.model)}
    start = time.perf_counter()

    scifact = load_beir(args.data_dir / "scifact", "dev")
    bm25_q, _, skipped = prepare_queries(
        scifact, top_k=args.top_k, max_queries=args.max_queries, candidates="given"
    )
    cmp_bm25 = given_comparison(raw, scifact, args)
    fit = fusion_fit(raw, scifact, bm25_q, args, with_scores=False)
    rows.append(summary_row("SciFact dev, BM25", cmp_bm25, fit, "fused >= max + 0.01"))
    sections.append(f"### SciFact dev, BM25 top {args.top_k}\n\n{cmp_bm25.to_markdown()}")

    if not args.skip_dense:
        dense_q = dense_queries(scifact, bm25_q, args)
        name = "MiniLM bi-encoder"
        cmp_dense = prepared_comparison(raw, scifact, dense_q, name, skipped, args)
        fit = fusion_fit(raw, scifact, dense_q, args)
        ranks_only = fusion_fit(raw, scifact, dense_q, args, with_scores=False)
        rows.append(summary_row(f"SciFact dev, {name}", cmp_dense, fit, "fused >= max + 0.01"))
        sections.append(
            f"### SciFact dev, {name} top {args.top_k} (cosine scores fused)\n\n"
            f"{cmp_dense.to_markdown()}\n\nThe same fusion on the cosine ranks only: held-out "
            f"{ranks_only.heldout:.4f} ({ranks_only.config.describe()})."
        )
        details["dense_ranks_only"] = ranks_only.to_dict()

    if not args.skip_cranfield:
        cranfield = load_beir(args.data_dir / "cranfield", "all")
        cran_q, _, _ = prepare_queries(
            cranfield, top_k=args.top_k, max_queries=args.max_queries, candidates="given"
        )
        cmp_cran = given_comparison(raw, cranfield, args)
        fit = fusion_fit(raw, cranfield, cran_q, args, with_scores=False)
        rows.append(summary_row("Cranfield all, BM25", cmp_cran, fit, "fused >= first - 0.005"))
        sections.append(f"### Cranfield (all), BM25 top {args.top_k}\n\n{cmp_cran.to_markdown()}")

    calib_md, details["calibration"] = calibration_figures(raw, scifact, bm25_q, args)
    seconds = time.perf_counter() - start
    text = "\n\n".join(
        [
            f"## Fusion and calibration: {raw.model_name} (max_length {args.max_length}, "
            f"top {args.top_k}, {args.folds}-fold CV, seed {args.seed})",
            summary_markdown(rows),
            "Fused figures are held-out (each query fused with the setting chosen on the other "
            "folds); 'fusion (all queries)' is the setting chosen on every query, the one "
            f"`bge-rerank fit` would store. {raw.pairs_scored} pairs scored in {seconds:.0f} s.",
            *sections,
            "### Calibration\n\n" + calib_md,
        ]
    )
    print(text)
    details["summary"] = rows
    details["args"] = {k: str(v) for k, v in vars(args).items()}
    (args.out / "fusion_scifact.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "fusion_scifact.json").write_text(
        json.dumps(details, indent=1, default=str) + "\n", encoding="utf-8"
    )
    logger.info("wrote %s", args.out / "fusion_scifact.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
