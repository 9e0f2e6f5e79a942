"""The LlamaIndex-style fine-tuning call on SciFact, with nothing but the engine's defaults.

Training data: LlamaIndex samples ``{"query", "context", "score"}``: for every relevant abstract
of a train claim, the abstract (score 1) and 4 non-relevant abstracts drawn (seeded) from the
claim's BM25 top 30 (score 0), listed positives first, as a user would build them. Then exactly
the call of issue 21:

    CrossEncoderFinetuneEngine(samples, model_id=<MiniLM cross-encoder>, model_output_path=...,
                               batch_size=16, epochs=1, max_length=256).finetune()

and the model reranks the BM25 top 30 at 256 tokens. Two modes, so that the recipe is chosen on
data that the final figure does not use:

    # choose the recipe: train on SciFact train minus 159 claims, measure on those 159
    python benchmarks/finetune_llamaindex.py --data ../shared/data/scifact --tune 159
    # the final figure, once: train on all of SciFact train, measure on dev
    python benchmarks/finetune_llamaindex.py --data ../shared/data/scifact

``--precision fp32`` forces float32 on a CPU with bf16 hardware (what a CPU without it runs).
Prints a table: the BM25 order and the fine-tuned model (nDCG@10, MRR@10), minutes and steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def passage(doc) -> str:
    return f"{doc.title}\n{doc.text}".strip()


def rerank_figures(data: Path, split: str, qids: list[str], scorer, top_k: int) -> dict:
    """nDCG@10 / MRR@10 of the BM25 order and of ``scorer`` on ``qids`` (BM25 top ``top_k``)."""
    from bge_rerank_plugins.beir import load_beir
    from bge_rerank_plugins.evaluation.metrics import mrr_at_k, ndcg_at_k

    ds = load_beir(data, split)
    sums = {"bm25": [0.0, 0.0], "model": [0.0, 0.0]}
    n = 0
    for qid in qids:
        grades = {d: g for d, g in ds.qrels.get(qid, {}).items() if g > 0}
        cands = ds.candidates.get(qid) if ds.candidates else None
        if not grades or cands is None:
            continue
        ids = list(cands.ids[:top_k])
        scores = scorer.score(ds.queries[qid].text, [passage(ds.corpus[d]) for d in ids])
        reranked = [d for _, d in sorted(zip(scores, ids), key=lambda x: -x[0])]
        for name, order in (("bm25", ids), ("model", reranked)):
            sums[name][0] += ndcg_at_k(order, grades, 10)
            sums[name][1] += mrr_at_k(order, grades, 10)
        n += 1
    return {k: (v[0] / n, v[1] / n) for k, v in sums.items()} | {"queries": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    ap.add_argument("--out", type=Path, default=Path("runs/llamaindex-call"))
    ap.add_argument("--tune", type=int, default=0, help="claims of train held out for tuning")
    ap.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--seed", type=int, default=0, help="seed of the negatives and the split")
    ap.add_argument("--top-k", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    from bge_rerank_plugins import CrossEncoderScorer
    from bge_rerank_plugins.beir import load_beir
    from bge_rerank_plugins.finetune import samples_from_beir
    from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine
    from bge_rerank_plugins.minilm import build_minilm_cross_encoder

    if args.threads:
        torch.set_num_threads(args.threads)
    train_ids = list(load_beir(args.data, "train").query_ids)
    if args.tune:
        tune_ids = random.Random(1000 + args.seed).sample(train_ids, args.tune)
        fit_ids = [q for q in train_ids if q not in set(tune_ids)]
        split, eval_ids = "train", tune_ids
    else:
        fit_ids, split = train_ids, "dev"
        eval_ids = list(load_beir(args.data, "dev").query_ids)
    samples = samples_from_beir(args.data, "train", query_ids=fit_ids, seed=args.seed)
    print(f"{len(samples)} samples, {len({s['query'] for s in samples})} claims; eval on {split}")
    base = build_minilm_cross_encoder(args.out.parent / "minilm-base")
    out = args.out / ("tune" if args.tune else "final")
    load_before = os.getloadavg()[0]
    started = time.time()
    engine = CrossEncoderFinetuneEngine(
        samples,
        model_id=str(base),
        model_output_path=str(out / "model"),
        batch_size=16,
        epochs=1,
        max_length=256,
        precision=args.precision,
    )
    result = engine.finetune()
    minutes = (time.time() - started) / 60
    scorer = CrossEncoderScorer(str(out / "model"), max_length=256)
    figures = rerank_figures(args.data, split, eval_ids, scorer, args.top_k)
    bm25, model = figures["bm25"], figures["model"]
    print(f"\n{figures['queries']} {split} queries, BM25 top {args.top_k} reranked at 256 tokens")
    print("| run | nDCG@10 | MRR@10 | minutes | steps |")
    print("|---|---|---|---|---|")
    print(f"| BM25 order | {bm25[0]:.3f} | {bm25[1]:.3f} | - | - |")
    print(
        f"| engine defaults (precision={args.precision}) | {model[0]:.3f} | {model[1]:.3f} | "
        f"{minutes:.1f} | {result.global_step} |"
    )
    print(f"delta nDCG@10: {model[0] - bm25[0]:+.3f}; load average at start {load_before:.1f}")
    print("held-out yardstick:", result.held_out.line() if result.held_out else None)
    print("decisions:", json.dumps(result.decisions))
    (out / "results.json").write_text(
        json.dumps(
            {
                "figures": figures,
                "minutes": minutes,
                "steps": result.global_step,
                "decisions": result.decisions,
                "held_out": result.held_out.as_dict() if result.held_out else None,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
