"""Causal-LM rerankers: our three runner modes against the peer library, on the same pairs.

    python benchmarks/bench_scorer.py --model qwen3-shape --pairs 96 --queries 4
    python benchmarks/bench_scorer.py --model gemma-shape --pairs 48 --queries 4 --layers 2

``qwen3-shape``: a Qwen3-Reranker-0.6B-shaped ``Qwen3ForCausalLM`` (hidden 1024, 16 query and
8 key/value heads of 128, MLP 3072, the real 151,936-row tied LM head) with random weights and
``--layers`` decoder layers (the real model has 28: every figure here is per layer count, the
ratios hold roughly since each layer costs the same), saved as a sentence-transformers v6
CrossEncoder (Transformer + LogitScore); peer: sentence-transformers ``CrossEncoder.predict``.
``gemma-shape``: a bge-reranker-v2-gemma-shaped ``GemmaForCausalLM`` (Gemma-2B: hidden 2048, 8
heads, 1 key/value head of 256, MLP 16384, 256,000-row LM head); peer: FlagEmbedding
``FlagLLMReranker.compute_score``. Both tokenizers are byte-level BPEs trained on the workload.

Ours runs in three modes (:mod:`bge_rerank_plugins.runtime.backends.causal`): ``full`` (the
causal-LM forward with the whole vocabulary projection at every position: the reference),
``last`` (the base model, then the LM head's one or two rows at the last token) and ``prefix``
(also the instruction + query prefix computed once per query, its key/value cache reused).
Everything runs in this one process, float32, after a warm-up; the figure is the median of
``--repeats`` runs.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

SHAPES = {
    "qwen3-shape": {
        "kind": "qwen3",
        "hidden_size": 1024,
        "num_heads": 16,
        "num_kv_heads": 8,
        "head_dim": 128,
        "intermediate_size": 3072,
        "model_vocab_size": 151936,
    },
    "gemma-shape": {
        "kind": "gemma",
        "hidden_size": 2048,
        "num_heads": 8,
        "num_kv_heads": 1,
        "head_dim": 256,
        "intermediate_size": 16384,
        "model_vocab_size": 256000,
    },
}


def build_shape(name: str, folder: Path, layers: int, texts: list[str]) -> Path:
    """The random model of shape ``name`` with ``layers`` layers (built once, then reused)."""
    from bge_rerank_plugins.testing_causal import build_tiny_causal_lm

    out = folder / f"{name}-{layers}l"
    if (out / "config.json").exists():
        return out
    shape = dict(SHAPES[name])
    kind = shape.pop("kind")
    return build_tiny_causal_lm(
        kind, out, num_layers=layers, vocab_size=8000, texts=tuple(texts), **shape
    )


def _timed(fn, pairs, repeats: int) -> tuple[float, list[float]]:
    fn(pairs[: min(8, len(pairs))])
    times, scores = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = fn(pairs)
        times.append(time.perf_counter() - start)
    return statistics.median(times), scores


def run_causal(args, pairs: list[tuple[str, str]], source: str, root: Path) -> int:
    """Build the shape, time ours (three modes) and the peer, print the table."""
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    texts = sorted({q for q, _ in pairs}) + [p for _, p in pairs]
    model = build_shape(args.model, root / ".cache" / "bench-models", args.layers, texts)
    from bge_rerank_plugins import CrossEncoderScorer

    scorer = CrossEncoderScorer(
        model,
        device="cpu",
        dtype="float32",
        normalize=False,
        max_length=args.max_length,
        batch_size=args.batch_size,
        show_progress_bar=False,
    )
    lengths = [len(ids) for ids in scorer.encoder.encode(pairs)["input_ids"]]
    shared = [t.index(1) for t in scorer.encoder.encode(pairs)["token_type_ids"]]
    rows = []
    for mode in ("full", "last", "prefix"):
        scorer.runner.mode = mode
        scorer.runner.clear()
        seconds, scores = _timed(scorer.score_pairs, pairs, args.repeats)
        rows.append((f"ours, mode={mode}", seconds, scores))
    peer_name, peer = _peer(args, model)
    seconds, reference = _timed(peer, pairs, args.repeats)
    rows.append((peer_name, seconds, reference))
    peer_rate = len(pairs) / seconds
    print(
        f"# bench_causal: {args.model} with {args.layers} layers (random weights), "
        f"{len(pairs)} pairs ({args.queries} queries), {source}"
    )
    print(
        f"tokens per pair: median {statistics.median(lengths):.0f}, max {max(lengths)}; "
        f"shared prefix (instruction + query) median {statistics.median(shared):.0f} tokens; "
        f"threads {args.threads}, batch {args.batch_size}, max_length {args.max_length}, "
        f"repeats {args.repeats}; torch {torch.__version__}; load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs"
    )
    print()
    print(f"| run | pairs/s | x {peer_name} | max abs diff vs {peer_name} |")
    print("|---|---|---|---|")
    worst = 0.0
    for label, secs, scores in rows:
        rate = len(pairs) / secs
        diff = max(abs(a - b) for a, b in zip(scores, reference))
        if label.startswith("ours"):
            worst = max(worst, diff)
        print(f"| {label} | {rate:.2f} | {rate / peer_rate:.2f} | {diff:.1e} |")
    full, last, prefix = (len(pairs) / r[1] for r in rows[:3])
    print()
    print(
        f"gain from the last position only (two LM-head rows): x{last / full:.2f} over full; "
        f"from the shared prefix on top: x{prefix / last:.2f}; load average at end "
        f"{os.getloadavg()[0]:.2f}"
    )
    ok = worst <= args.atol
    print(f"float32 agreement: max abs diff {worst:.1e} ({'ok' if ok else 'FAIL'})")
    return 0 if ok else 1


def _peer(args, model: Path):
    import torch

    if args.model == "qwen3-shape":
        from sentence_transformers import CrossEncoder

        encoder = CrossEncoder(str(model), device="cpu", activation_fn=torch.nn.Identity())

        def st(pairs):
            out = encoder.predict(pairs, batch_size=args.batch_size, show_progress_bar=False)
            return [float(x) for x in out]

        return "sentence-transformers", st
    from FlagEmbedding import FlagLLMReranker

    reranker = FlagLLMReranker(
        str(model), use_fp16=False, devices="cpu", batch_size=args.batch_size
    )

    def flag(pairs):
        return reranker.compute_score(
            [list(p) for p in pairs], batch_size=args.batch_size, max_length=args.max_length
        )

    return "FlagEmbedding", flag
