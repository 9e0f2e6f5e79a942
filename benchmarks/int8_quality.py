"""Does int8 (or bf16) keep the ranking? Per-query Spearman and nDCG@10 vs float32, SciFact dev.

    python benchmarks/int8_quality.py --model DIR --data ../shared/data/scifact \\
        --queries 150 --top-k 20

Scores each dev query's top-k BM25 candidates (title + abstract) with the float32 ONNX backend
(equal to torch to ~1e-5) and each int8 backend, in the same process and on the same pairs, then
reports the minimum and mean per-query Spearman correlation of the scores against float32, how
many queries fall under 0.98, and nDCG@10 of each reranking (documents past top-k keep BM25
order behind the reranked ones). Use a fine-tuned model: a random classification head says
nothing about ranking quality.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workload import backend_options, load_corpus  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from scipy.stats import spearmanr

    from bge_rerank_plugins import CrossEncoderScorer
    from bge_rerank_plugins.evaluation import ndcg_at_k

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/scifact")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--backends",
        default="onnx-int8,torch-int8",
        help="approximate backends to compare with fp32 (also torch-bf16: bfloat16 weights)",
    )
    args = parser.parse_args(argv)

    corpus = load_corpus(args.data)
    texts = {}
    with open(args.data / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts[row["_id"]] = row["text"]
    grades: dict[str, dict[str, float]] = {}
    with open(args.data / "qrels" / f"{args.split}.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            qid, doc, grade = line.rstrip("\n").split("\t")
            grades.setdefault(qid, {})[doc] = float(grade)
    rows = []
    with open(args.data / "candidates" / f"{args.split}.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["qid"] in grades and row["qid"] in texts:
                rows.append(row)
    rows = rows[: args.queries]
    queries = [texts[r["qid"]] for r in rows]
    candidates = [r["ranked"][: args.top_k] for r in rows]
    passages = [[f"{corpus[d][0]}\n{corpus[d][1]}".strip() for d in ids] for ids in candidates]

    def run(backend: str) -> tuple[list[list[float]], float]:
        scorer = CrossEncoderScorer(
            args.model,
            device="cpu",
            **backend_options(backend),
            max_length=args.max_length,
            batch_size=args.batch_size,
            normalize=False,
        )
        t0 = time.perf_counter()
        scores = scorer.score_many(queries, passages)
        return scores, time.perf_counter() - t0

    def ndcg(scores: list[list[float]] | None) -> float:
        values = []
        for i, row in enumerate(rows):
            ids = list(row["ranked"])
            if scores is not None:
                top = sorted(range(len(candidates[i])), key=lambda j: -scores[i][j])
                ids = [candidates[i][j] for j in top] + ids[args.top_k :]
            values.append(ndcg_at_k(ids, grades[row["qid"]], 10))
        return statistics.mean(values)

    reference, ref_s = run("onnx")
    n_pairs = sum(len(p) for p in passages)
    print(f"# int8 quality: {args.model}, {len(rows)} {args.split} queries x top-{args.top_k}")
    print(
        "| backend | nDCG@10 | loss vs fp32 | min per-query Spearman | mean | "
        "queries under 0.98 | pairs/s |"
    )
    print("|---|---|---|---|---|---|---|")
    print(f"| BM25 (no rerank) | {ndcg(None):.4f} | | | | | |")
    base = ndcg(reference)
    print(f"| onnx (fp32) | {base:.4f} | 0 | 1 | 1 | 0 | {n_pairs / ref_s:.1f} |")
    for backend in [b for b in args.backends.split(",") if b]:
        scores, seconds = run(backend)
        rho = [float(spearmanr(a, b).statistic) for a, b in zip(reference, scores)]
        value = ndcg(scores)
        print(
            f"| {backend} | {value:.4f} | {base - value:+.4f} | {min(rho):.4f} | "
            f"{statistics.mean(rho):.4f} | {sum(r < 0.98 for r in rho)} of {len(rho)} | "
            f"{n_pairs / seconds:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
