"""Pilot runs comparing fine-tuning recipes for the MiniLM cross-encoder on SciFact (CPU).

Calls sentence-transformers' CrossEncoderTrainer directly (the engine wraps the same pieces) so
variants can be compared before the engine is finished. Dev split is used only for evaluation.

    python benchmarks/finetune_scifact_pilot.py --data ../shared/data/scifact --minutes 7 \
        --name grouped --loss softmax --negatives 7 --max-length 128 --lr 1e-4 --head-lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def read_jsonl(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load(data: Path, split: str):
    corpus = {d["_id"]: d for d in read_jsonl(data / "corpus.jsonl")}
    queries = {q["_id"]: q["text"] for q in read_jsonl(data / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    with open(data / "qrels" / f"{split}.tsv", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            q, d, s = line.rstrip("\n").split("\t")
            qrels.setdefault(q, {})[d] = int(s)
    cands = {c["qid"]: c for c in read_jsonl(data / "candidates" / f"{split}.jsonl")}
    return corpus, queries, qrels, cands


def doc_text(doc) -> str:
    return f"{doc.get('title', '')}\n{doc.get('text', '')}".strip()


def ndcg_mrr(ranked, rels, k=10):
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(rels.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    mrr = next((1 / (i + 1) for i, d in enumerate(ranked[:k]) if rels.get(d, 0) > 0), 0.0)
    return (dcg / idcg if idcg else 0.0), mrr


def evaluate(model_dir, data, top=30, max_length=256):
    from bge_rerank_plugins import CrossEncoderScorer

    corpus, queries, qrels, cands = load(data, "dev")
    qids = [q for q in cands if q in qrels]
    s = CrossEncoderScorer(str(model_dir), max_length=max_length, batch_size=32, normalize=False)
    t = time.time()
    lists = [cands[q]["ranked"][:top] for q in qids]
    scores = s.score_many(
        [queries[q] for q in qids], [[doc_text(corpus[d]) for d in ids] for ids in lists]
    )
    n = m = nb = mb = 0.0
    for q, ids, sc in zip(qids, lists, scores):
        order = [d for _, d in sorted(zip(sc, ids), key=lambda x: -x[0])]
        a, b = ndcg_mrr(order, qrels[q])
        c, e = ndcg_mrr(ids, qrels[q])
        n, m, nb, mb = n + a, m + b, nb + c, mb + e
    k = len(qids)
    return {
        "ndcg10": n / k,
        "mrr10": m / k,
        "bm25_ndcg10": nb / k,
        "bm25_mrr10": mb / k,
        "eval_s": time.time() - t,
    }


def build_groups(data, negatives, pool, seed, copies, teacher=None):
    corpus, queries, qrels, cands = load(data, "train")
    rng = random.Random(seed)
    rows = {"query": [], "docs": [], "label": []}
    if teacher is not None:
        rows = {"query": [], "docs": [], "teacher": [], "label": []}
    for _ in range(copies):
        for q, rel in qrels.items():
            positives = [d for d, g in rel.items() if g > 0 and d in corpus]
            ranked = [d for d in cands.get(q, {}).get("ranked", []) if d not in rel][:pool]
            if not positives or len(ranked) < negatives:
                continue
            for p in positives:
                negs = rng.sample(ranked, negatives)
                ids = [p, *negs]
                rows["query"].append(queries[q])
                rows["docs"].append([doc_text(corpus[d]) for d in ids])
                rows["label"].append([1.0] + [0.0] * negatives)
                if teacher is not None:
                    rows["teacher"].append([teacher(queries[q], d) for d in ids])
    return rows


def bi_encoder_teacher(data, scale):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from bge_rerank_plugins.minilm import minilm_encoder_dir

    cache = Path("/tmp/scifact_minilm_emb.npz")
    corpus, queries, _, _ = load(data, "train")
    enc = SentenceTransformer(str(minilm_encoder_dir()), device="cpu")
    enc.max_seq_length = 256
    ids = sorted(corpus)
    if cache.exists():
        emb = np.load(cache)["emb"]
    else:
        t = time.time()
        emb = enc.encode(
            [doc_text(corpus[d]) for d in ids],
            batch_size=32,
            normalize_embeddings=True,
            show_progress_bar=True,
        )
        np.savez(cache, emb=emb)
        print(f"encoded corpus in {time.time() - t:.0f}s")
    pos = {d: i for i, d in enumerate(ids)}
    qids = list(queries)
    qemb = enc.encode([queries[q] for q in qids], normalize_embeddings=True)
    qpos = {queries[q]: qemb[i] for i, q in enumerate(qids)}

    def score(qtext, did):
        return float(scale * (qpos[qtext] @ emb[pos[did]]))

    return score


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    ap.add_argument("--name", default="pilot")
    ap.add_argument("--minutes", type=float, default=7)
    ap.add_argument("--loss", default="softmax", choices=["softmax", "bce"])
    ap.add_argument("--negatives", type=int, default=7)
    ap.add_argument("--pool", type=int, default=30)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--eval-max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--distill", type=float, default=0.0)
    ap.add_argument("--teacher-scale", type=float, default=20.0)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/pilots"))
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer
    from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments
    from transformers import TrainerCallback

    from bge_rerank_plugins.finetune.losses import GroupedSoftmaxLoss
    from bge_rerank_plugins.minilm import build_minilm_cross_encoder

    torch.set_num_threads(args.threads)
    base = build_minilm_cross_encoder(args.out / "base")
    teacher = bi_encoder_teacher(args.data, args.teacher_scale) if args.distill > 0 else None
    rows = build_groups(args.data, args.negatives, args.pool, args.seed, args.copies, teacher)
    ds = Dataset.from_dict(rows).shuffle(seed=args.seed)
    print(f"{len(ds)} groups")
    model = CrossEncoder(str(base), num_labels=1, max_length=args.max_length, device="cpu")
    loss = GroupedSoftmaxLoss(model, distill_weight=args.distill)
    budget = args.minutes * 60
    steps_est = len(ds) // args.batch
    log = []

    class Budget(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            self.t0 = time.time()

        def on_step_end(self, a, state, control, **kw):
            if time.time() - self.t0 > budget:
                control.should_training_stop = True

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                log.append((state.global_step, round(time.time() - self.t0), logs["loss"]))
                print(log[-1], flush=True)

    class T(CrossEncoderTrainer):
        def create_optimizer(self, model=None):
            head, body_decay, body_nodecay = [], [], []
            for n, p in self.model.named_parameters():
                if not p.requires_grad:
                    continue
                if "classifier" in n or "pooler" in n:
                    head.append(p)
                elif "bias" in n or "LayerNorm" in n:
                    body_nodecay.append(p)
                else:
                    body_decay.append(p)
            self.optimizer = torch.optim.AdamW(
                [
                    {"params": body_decay, "lr": args.lr, "weight_decay": 0.01},
                    {"params": body_nodecay, "lr": args.lr, "weight_decay": 0.0},
                    {"params": head, "lr": args.head_lr, "weight_decay": 0.0},
                ]
            )
            return self.optimizer

        def create_scheduler(self, num_training_steps, optimizer=None):
            opt = optimizer or self.optimizer
            t0 = time.time()
            warm = max(1, int(0.1 * min(num_training_steps, 10**9)))

            def factor(step):
                progress = max(step / max(1, num_training_steps), (time.time() - t0) / budget)
                if step < warm and progress < 0.1:
                    return (step + 1) / (warm + 1)
                return max(0.0, 1.0 - progress)

            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return self.lr_scheduler

    targs = CrossEncoderTrainingArguments(
        output_dir=str(args.out / args.name / "ckpt"),
        per_device_train_batch_size=args.batch,
        num_train_epochs=1,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        dataloader_drop_last=True,
        use_cpu=True,
    )
    trainer = T(model=model, args=targs, train_dataset=ds, loss=loss, callbacks=[Budget()])
    t = time.time()
    trainer.train()
    train_s = time.time() - t
    steps = trainer.state.global_step
    out = args.out / args.name / "model"
    model.save_pretrained(str(out))
    res = evaluate(out, args.data, max_length=args.eval_max_length)
    res.update(
        name=args.name,
        train_min=round(train_s / 60, 2),
        steps=steps,
        steps_est=steps_est,
        args={k: str(v) for k, v in vars(args).items()},
        loss_log=log,
        load=os.getloadavg(),
    )
    print(json.dumps(res))
    with open(args.out / "results.jsonl", "a") as fh:
        fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
