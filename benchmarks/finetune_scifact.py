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


def add_teacher(groups: list[dict], kind: str, scale: float, data: Path) -> float:
    """Attach teacher scores (``positive_scores``/``negative_scores``) to every group.

    ``kind="biencoder"``: the MiniLM bi-encoder's cosine times ``scale``
    (:func:`~bge_rerank_plugins.finetune.teachers.biencoder_teacher_scores`). ``kind="hybrid"``:
    the mean of the z-scored BM25 score and the z-scored cosine within each group, times
    ``scale`` (prints how well each ranks the training pools). Returns the seconds it took.
    """
    import numpy as np

    from bge_rerank_plugins.beir import load_beir
    from bge_rerank_plugins.bm25 import Bm25Index
    from bge_rerank_plugins.evaluation import ndcg_at_k
    from bge_rerank_plugins.finetune import TrainingGroup, biencoder_teacher_scores
    from bge_rerank_plugins.minilm import minilm_encoder_dir

    t = time.time()
    records = [TrainingGroup(g["query"], g["positives"], g["negatives"]) for g in groups]
    scored = biencoder_teacher_scores(records, minilm_encoder_dir(), scale=1.0)
    # one entry per group, in order: two claims may share a text but not their pools
    cosines = [np.array([*g.positive_scores, *g.negative_scores]) for g in scored]
    bm25 = None
    if kind == "hybrid":
        corpus = load_beir(data, "train").corpus
        bm25 = Bm25Index(list(corpus), [passage(d) for d in corpus.values()])
        position = {passage(d): i for i, d in enumerate(corpus.values())}
    quality: dict[str, list[float]] = {"bm25": [], "cosine": [], "teacher": []}

    def zscore(x: np.ndarray) -> np.ndarray:
        return (x - x.mean()) / (x.std() + 1e-6)

    for group, cosine in zip(groups, cosines, strict=True):
        members = group["positives"] + group["negatives"]
        n = len(group["positives"])
        if bm25 is not None:
            lexical = np.asarray(bm25.scores(group["query"])[[position[p] for p in members]])
            teacher = scale * (zscore(cosine) + zscore(lexical)) / 2
            quality["bm25"].append(_pool_ndcg(lexical, n, ndcg_at_k))
        else:
            teacher = scale * cosine
        quality["cosine"].append(_pool_ndcg(cosine, n, ndcg_at_k))
        quality["teacher"].append(_pool_ndcg(teacher, n, ndcg_at_k))
        group["positive_scores"] = [float(v) for v in teacher[:n]]
        group["negative_scores"] = [float(v) for v in teacher[n:]]
    for name, values in quality.items():
        if values:
            print(f"train pools: {name} ranking nDCG@10 = {sum(values) / len(values):.3f}")
    return time.time() - t


def _pool_ndcg(scores, positives: int, ndcg_at_k) -> float:
    """nDCG@10 of a group's pool ordered by ``scores`` (the first ``positives`` are relevant)."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    grades = {str(i): 1 for i in range(positives)}
    return ndcg_at_k([str(i) for i in order], grades, 10)


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
    ap.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="training precision (auto: bf16 autocast on a CPU with bf16 hardware)",
    )
    ap.add_argument("--resume", action="store_true")
    ap.add_argument(
        "--teacher",
        choices=("none", "biencoder", "hybrid"),
        default="none",
        help="distil from the bi-encoder's cosine or its fusion with BM25 (the default loss "
        "'auto' then distils)",
    )
    ap.add_argument("--teacher-scale", type=float, default=20.0)
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
    if args.teacher != "none":
        teacher_seconds = add_teacher(groups, args.teacher, args.teacher_scale, args.data)
        print(f"{args.teacher} teacher scores in {teacher_seconds:.0f}s")

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
        precision=args.precision,
        evaluation_steps=50,
        max_minutes=args.minutes,
        resume_from_checkpoint=True if args.resume else None,
        **overrides,
    )
    print(f"loss: {engine.loss}")
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
        "mixed_precision": engine._mixed_precision(),
        "loadavg_before": load,
        "loadavg_after": load_after,
        "loss_curve": losses,
        "results": [r.to_dict() for r in rows],
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
