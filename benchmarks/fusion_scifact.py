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
   seeded shuffle; Platt, beta (and isotonic) are fitted on one half with ``fit_calibration``,
   which also chooses one by cross-validated log loss over that half's queries
   (``--calibration-method`` overrides it), and measured on the other: ECE (10 bins) and log
   loss of each, and with ``score_threshold=0.5`` the pairs kept, their precision and their
   mean probability. The reliability diagram of the measured half goes to ``--out``.

Each (query, passage) pair is scored once (raw logits), whatever the number of runs that use
it, and its raw score is kept on disk (``--scores-cache``, default ``--out``/score_cache: one
JSON file per model weights, dataset, split, first stage, ``max_length`` and ``top_k``), so a
second run with another calibration or fusion setting scores nothing; ``--no-scores-cache``
turns it off. The tables are printed as Markdown, and written with all figures to ``--out``
(``fusion_scifact.md``, ``fusion_scifact.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

logger = logging.getLogger("fusion_scifact")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_bench_helpers import RawScores, ScoreCache, calibration_table  # noqa: E402

KS = (1, 3, 5, 10)
METRIC = "ndcg@10"


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
    parser.add_argument(
        "--scores-cache", type=Path, default=None,
        help="folder of the raw-score cache (default: --out/score_cache)",
    )  # fmt: skip
    parser.add_argument("--no-scores-cache", action="store_true", help="score every pair again")
    parser.add_argument(
        "--calibration-method", choices=["auto", "platt", "beta", "isotonic"], default="auto",
        help="the calibration fit_calibration stores (auto: the lowest CV log loss)",
    )  # fmt: skip
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
    """Fit on a seeded half of the queries, measure each method on the other half."""
    from bge_rerank_plugins.evaluation import plot_reliability
    from bge_rerank_plugins.evaluation.calibration_report import THRESHOLD

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
    rows, extra, curves, labels = calibration_table(
        fit_x, fit_y, test_x, test_y, folds=args.folds, seed=args.seed,
        method=args.calibration_method,
    )  # fmt: skip
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
        f"Isotonic: {extra['isotonic']}. Threshold {THRESHOLD} on the probabilities. The fit "
        f"chose **{extra['method']}** ({extra['choice']}); 'fit-half CV log loss' is the "
        "figure it chose by, never the measured half.",
        "",
    ]
    extra.update(
        fit_queries=len(fit_q), test_queries=len(test_q), test_pairs=len(labels),
        test_relevant=sum(labels), reliability_png=None if png is None else str(png),
    )  # fmt: skip
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
    cache = None
    if not args.no_scores_cache:
        folder = args.scores_cache or args.out / "score_cache"
        cache = ScoreCache(folder, str(args.model), args.max_length, args.top_k)
    raw = RawScores(scorer, Path(str(args.model)).name or str(args.model), cache)
    sections: list[str] = []
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {"model": str(args.model), "scores_cache": None}
    if cache is not None:
        details["scores_cache"] = str(cache.folder)
    start = time.perf_counter()

    scifact = load_beir(args.data_dir / "scifact", "dev")
    bm25_q, _, skipped = prepare_queries(
        scifact, top_k=args.top_k, max_queries=args.max_queries, candidates="given"
    )
    bm25 = "bm25 (given lists)"
    raw.section("scifact", "dev", bm25)
    cmp_bm25 = given_comparison(raw, scifact, args)
    fit = fusion_fit(raw, scifact, bm25_q, args, with_scores=False)
    rows.append(summary_row("SciFact dev, BM25", cmp_bm25, fit, "fused >= max + 0.01"))
    sections.append(f"### SciFact dev, BM25 top {args.top_k}\n\n{cmp_bm25.to_markdown()}")

    if not args.skip_dense:
        dense_q = dense_queries(scifact, bm25_q, args)
        name = "MiniLM bi-encoder"
        raw.section("scifact", "dev", f"minilm cosine (len {args.encoder_max_length})")
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
        raw.section("cranfield", "all", bm25)
        cmp_cran = given_comparison(raw, cranfield, args)
        fit = fusion_fit(raw, cranfield, cran_q, args, with_scores=False)
        rows.append(summary_row("Cranfield all, BM25", cmp_cran, fit, "fused >= first - 0.005"))
        sections.append(f"### Cranfield (all), BM25 top {args.top_k}\n\n{cmp_cran.to_markdown()}")

    raw.section("scifact", "dev", bm25)  # its pairs are in memory already; none scored here
    calib_md, details["calibration"] = calibration_figures(raw, scifact, bm25_q, args)
    raw.flush()
    seconds = time.perf_counter() - start
    text = "\n\n".join(
        [
            f"## Fusion and calibration: {raw.model_name} (max_length {args.max_length}, "
            f"top {args.top_k}, {args.folds}-fold CV, seed {args.seed})",
            summary_markdown(rows),
            "Fused figures are held-out (each query fused with the setting chosen on the other "
            "folds); 'fusion (all queries)' is the setting chosen on every query, the one "
            f"`bge-rerank fit` would store. {raw.pairs_scored} pairs scored and "
            f"{raw.pairs_from_cache} read from the score cache, in {seconds:.0f} s.",
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
