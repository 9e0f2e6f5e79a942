"""Compare rerankers (e.g. a base model and its fine-tuned version) on a BEIR-style folder.

Reranks each query's first-stage candidates with every model, prints Hit/MRR/nDCG/Recall@K next
to the first-stage order, and writes table.md, metrics.json and chart.png.

    # real data: base vs fine-tuned on SciFact dev, BM25 top 30
    python examples/evaluate.py --data ../shared/data/scifact --split dev \\
        --model base=models/minilm-ce --model tuned=runs/scifact/best --top-k 30 --out runs/eval

    # offline (CI): generates a tiny BEIR folder and two tiny random models
    python examples/evaluate.py --tiny --out /tmp/eval-demo
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.beir import Bm25Index, Document, write_beir
from bge_rerank_plugins.evaluation import evaluate_models

TOPICS = {
    "panda": ["bamboo", "bear", "china", "forest"],
    "volcano": ["lava", "eruption", "magma", "ash"],
    "bitcoin": ["blockchain", "mining", "wallet", "ledger"],
    "tennis": ["racket", "serve", "court", "grand slam"],
    "coffee": ["espresso", "bean", "roast", "caffeine"],
    "glacier": ["ice", "melt", "valley", "climate"],
}


def make_tiny_beir(folder: Path, seed: int = 0) -> Path:
    """A small synthetic BEIR folder: 6 topics x 5 documents, 12 dev queries, BM25 top 10."""
    rng = random.Random(seed)
    corpus, queries, qrels, candidates = {}, {}, {}, []
    ids_by_topic: dict[str, list[str]] = {}
    for topic, words in TOPICS.items():
        for i in range(5):
            doc_id = f"{topic}-{i}"
            picked = rng.sample(words, 3)
            corpus[doc_id] = {
                "title": f"{topic.title()} note {i}",
                "text": f"A note on the {topic}: {', '.join(picked)} and more about {picked[0]}.",
            }
            ids_by_topic.setdefault(topic, []).append(doc_id)
    bm25 = Bm25Index.from_corpus({d: Document(d, **doc) for d, doc in corpus.items()})
    for n, (topic, words) in enumerate(list(TOPICS.items()) * 2):
        qid = f"q{n}"
        queries[qid] = f"what about {topic} {rng.choice(words)}?"
        relevant = rng.sample(ids_by_topic[topic], 2)
        qrels[qid] = {relevant[0]: 2, relevant[1]: 1}
        ranked = [d for d, _ in bm25.search(queries[qid], k=10)]  # the first stage: BM25
        candidates.append(
            {
                "qid": qid,
                "pos": [d for d in ranked if d in relevant],
                "neg": [d for d in ranked if d not in relevant],
                "ranked": ranked,
            }
        )
    return write_beir(
        folder,
        corpus=corpus,
        queries=queries,
        qrels={"dev": qrels},
        candidates={"dev": candidates},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="BEIR-style folder (default with --tiny: generated)")
    parser.add_argument("--split", default="dev")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="a model to compare, e.g. base=models/minilm-ce (repeat)",
    )
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--out", default="runs/eval", help="folder for table, JSON and chart")
    parser.add_argument("--tiny", action="store_true", help="tiny folder and models (offline)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bge-eval-"))
    data = args.data
    models: dict[str, str] = {}
    for value in args.model:
        label, _, path = value.rpartition("=")
        models[label or Path(path).name] = path
    if args.tiny:
        from bge_rerank_plugins.testing import build_tiny_model

        data = data or str(make_tiny_beir(work / "tiny-beir"))
        if not models:  # two different random models stand in for "base" and "tuned"
            models = {
                "base": str(build_tiny_model("bert", work / "base", seed=0)),
                "tuned": str(build_tiny_model("bert", work / "tuned", seed=1)),
            }
    if not data or not models:
        parser.error("give --data and at least one --model, or --tiny")

    scorers = {
        label: CrossEncoderScorer(path, max_length=args.max_length)
        for label, path in models.items()
    }
    comparison = evaluate_models(
        scorers, data, args.split, top_k=args.top_k, max_queries=args.max_queries
    )
    print(comparison.to_markdown())
    for result in comparison.results:
        print(
            f"{result.name}: {result.num_pairs} pairs in {result.seconds:.1f}s, "
            f"nDCG@10 = {result.metrics['ndcg@10']:.3f}"
        )
    paths = comparison.save(args.out)
    print("wrote", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
