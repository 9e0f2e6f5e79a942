"""Quickstart: score and rank passages with CrossEncoderScorer.

python examples/quickstart.py                       # BAAI/bge-reranker-v2-m3 (needs the Hub)
python examples/quickstart.py --model ./my-reranker # any local cross-encoder directory
python examples/quickstart.py --tiny                # a tiny random model built offline (CI)
"""

from __future__ import annotations

import argparse
import tempfile
import time

from bge_rerank_plugins import CrossEncoderScorer

QUERY = "what is the capital of China?"
PASSAGES = [
    "Capital gains tax is charged on the profit when you sell an asset.",
    "Beijing is the capital of the People's Republic of China.",
    "The bank raised fresh capital from investors.",
    {"title": "Shanghai", "text": "Shanghai is the largest city in China by population."},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="BAAI/bge-reranker-v2-m3")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random model (offline)")
    args = parser.parse_args()
    model = args.model
    if args.tiny:
        from bge_rerank_plugins.testing import build_tiny_model

        model = str(build_tiny_model("xlm-roberta", tempfile.mkdtemp()))
    start = time.perf_counter()
    scorer = CrossEncoderScorer(model, template="{title}\n{text}")
    loaded = time.perf_counter()
    for ranked in scorer.rank(QUERY, PASSAGES):
        print(f"{ranked.score:.4f}  [{ranked.index}] {scorer.passage_text(ranked.passage)!r}")
    print(f"load {loaded - start:.2f}s, score {time.perf_counter() - loaded:.3f}s")


if __name__ == "__main__":
    main()
