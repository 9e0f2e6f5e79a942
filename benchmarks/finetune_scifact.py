"""Fine-tune the MiniLM cross-encoder on SciFact train through the engine, evaluate on dev.

Training data: each train claim's relevant abstracts as positives, the BM25 top-30 candidates
(``candidates/train.jsonl``) that are not relevant as hard negatives. The dev split is used only
for the final evaluation (reranking the BM25 top 30).

    python benchmarks/finetune_scifact.py --data ../shared/data/scifact --minutes 30

Prints a table (BM25 order, the fine-tuned model, optionally the untrained base) and writes
``results.json`` next to the model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEMPLATE = "{title}\n{text}"


def passage(doc) -> str:
    return f"{doc.title}\n{doc.text}".strip()


def training_groups(data: Path, pool: int, max_queries: int | None = None) -> list[dict]:
    from bge_rerank_plugins.beir import load_beir

    train = load_beir(data, "train")
    groups = []
    for qid in train.query_ids:
        relevant = train.relevant(qid)
        cands = train.candidates.get(qid) if train.candidates else None
        if not relevant or cands is None:
            continue
        negatives = [d for d in cands.ids if d not in relevant][:pool]
        groups.append(
            {
                "query": train.queries[qid].text,
                "positives": [passage(train.corpus[d]) for d in sorted(relevant)],
                "negatives": [passage(train.corpus[d]) for d in negatives],
            }
        )
        if max_queries and len(groups) >= max_queries:
            break
    return groups


def add_biencoder_teacher(groups: list[dict], scale: float) -> float:
    """Attach the MiniLM bi-encoder's cosine (times ``scale``) as teacher scores; returns seconds.

    The bi-encoder ranks SciFact about as well as BM25 with no training, and its scores over
    every passage of a group give the cross-encoder a signal on all negatives, not only on
    which one is the positive.
    """
    from sentence_transformers import SentenceTransformer

    from bge_rerank_plugins.minilm import minilm_encoder_dir

    t = time.time()
    encoder = SentenceTransformer(str(minilm_encoder_dir()), device="cpu")
    texts = sorted({p for g in groups for p in g["positives"] + g["negatives"]})
    queries = [g["query"] for g in groups]
    doc_vectors = encoder.encode(
        texts, batch_size=32, normalize_embeddings=True, convert_to_tensor=True
    )
    query_vectors = encoder.encode(
        queries, batch_size=64, normalize_embeddings=True, convert_to_tensor=True
    )
    row = {text: i for i, text in enumerate(texts)}
    for group, q in zip(groups, query_vectors):
        for field in ("positives", "negatives"):
            idx = [row[p] for p in group[field]]
            group[field[:-1] + "_scores"] = (scale * (doc_vectors[idx] @ q)).tolist()
    return time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    ap.add_argument("--out", type=Path, default=Path("runs/scifact-minilm"))
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget")
    ap.add_argument("--pool", type=int, default=30, help="BM25 candidates to draw negatives from")
    ap.add_argument("--top-k", type=int, default=30, help="dev candidates reranked")
    ap.add_argument(
        "--eval-max-length",
        type=int,
        nargs="+",
        default=[256],
        help="evaluate the fine-tuned model at each of these lengths",
    )
    ap.add_argument("--eval-base", action="store_true", help="also evaluate the untrained model")
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    # engine overrides (default: the engine's own defaults, i.e. what users get)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--head-lr", type=float, default=None)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--num-negatives", type=int, default=None)
    ap.add_argument("--loss", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument(
        "--teacher-scale",
        type=float,
        default=0.0,
        help="distil from the bi-encoder's cosine times this (0: no teacher); sets loss=distill",
    )
    ap.add_argument("--distill-weight", type=float, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    from bge_rerank_plugins import CrossEncoderScorer
    from bge_rerank_plugins.evaluation import evaluate_reranker
    from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine
    from bge_rerank_plugins.minilm import build_minilm_cross_encoder

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    base = build_minilm_cross_encoder(args.out.parent / "minilm-base")
    groups = training_groups(args.data, args.pool, args.max_queries)
    print(f"{len(groups)} training queries, {sum(len(g['positives']) for g in groups)} positives")

    teacher_seconds = 0.0
    if args.teacher_scale:
        teacher_seconds = add_biencoder_teacher(groups, args.teacher_scale)
        args.loss = args.loss or "distill"
        print(f"bi-encoder teacher scores in {teacher_seconds:.0f}s")

    overrides = {
        k: v
        for k, v in {
            "learning_rate": args.lr,
            "head_learning_rate": args.head_lr,
            "max_length": args.max_length,
            "num_negatives": args.num_negatives,
            "distill_weight": args.distill_weight,
        }.items()
        if v is not None
    }
    engine = CrossEncoderFinetuneEngine(
        groups,
        model_id=str(base),
        model_output_path=str(args.out / "model"),
        batch_size=args.batch_size,
        epochs=args.epochs,
        loss=args.loss,
        evaluation_steps=50,
        max_minutes=args.minutes,
        resume_from_checkpoint=True if args.resume else None,
        **overrides,
    )
    load = os.getloadavg()
    result = engine.finetune()
    load_after = os.getloadavg()
    losses = [(e["step"], e["loss"]) for e in result.log_history if "loss" in e]
    print(f"trained {result.train_seconds / 60:.1f} min, {result.global_step} steps")

    rows = [evaluate_reranker(None, args.data, "dev", top_k=args.top_k, name="first-stage order")]
    systems = [(f"fine-tuned @{n}", args.out / "model", n) for n in args.eval_max_length]
    if args.eval_base:
        systems.insert(0, ("untrained", base, args.eval_max_length[0]))
    for name, path, length in systems:
        t = time.time()
        scorer = CrossEncoderScorer(str(path), max_length=length, normalize=False)
        rows.append(
            evaluate_reranker(
                scorer, args.data, "dev", top_k=args.top_k, template=TEMPLATE, name=name
            )
        )
        print(f"evaluated {name} in {time.time() - t:.0f}s")
    print("| system | nDCG@10 | MRR@10 |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.metrics['ndcg@10']:.3f} | {r.metrics['mrr@10']:.3f} |")
    summary = {
        "train_minutes": round(result.train_seconds / 60, 2),
        "teacher_minutes": round(teacher_seconds / 60, 2),
        "global_step": result.global_step,
        "stopped_by_time": result.stopped_by_time,
        "max_length": engine._max_length,
        "loadavg_before": load,
        "loadavg_after": load_after,
        "loss_curve": losses,
        "results": [r.to_dict() for r in rows],
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
