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

Ours runs in five settings (:mod:`bge_rerank_plugins.runtime.backends.causal`), each step on top
of the one before: ``full`` (the causal-LM forward with the whole vocabulary projection at every
position: the reference); ``last`` (the base model, then the LM head's one or two rows at the last
token; the last layer at every position); ``last, last-token layer`` (the last decoder layer's
query, attention output and MLP at the last token only: :mod:`~bge_rerank_plugins.runtime.
backends.causal_last_layer`); ``prefix`` (also the instruction + query prefix computed once per
query, its key/value cache reused); ``prefix, length groups`` (the default: each batch's rows run
in groups of similar length, so less padding is computed). Everything runs in this one process,
float32, after one warm-up of each; the repeats are interleaved (each repeat times every run in
turn, so a load change on a shared machine hits them all alike) and the figure is each run's
median.
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


#: Our runs: (label, runner mode, last layer at the last token only, rows in length groups).
OURS = (
    ("ours, full", "full", False, False),
    ("ours, last", "last", False, False),
    ("ours, last, last-token layer", "last", True, False),
    ("ours, prefix, last-token layer", "prefix", True, False),
    ("ours, prefix, length groups (default)", "prefix", True, True),
)


def _interleaved(runs: dict, pairs, repeats: int) -> dict[str, tuple[float, list[float]]]:
    """Each run's median seconds and scores: one warm-up of each, then ``repeats`` rounds that
    time every run in turn."""
    for fn in runs.values():
        fn(pairs[: min(8, len(pairs))])
    times: dict[str, list[float]] = {name: [] for name in runs}
    scores: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            scores[name] = fn(pairs)
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), scores[name]) for name in runs}


def _ours(scorer, mode: str, trim: bool, split: bool):
    def run(pairs):
        runner = scorer.runner
        runner.mode, runner.trim_last_layer, runner.split_padding = mode, trim, split
        runner.clear()  # every run computes its prefixes again
        return scorer.score_pairs(pairs)

    return run


def run_causal(args, pairs: list[tuple[str, str]], source: str, root: Path) -> int:
    """Build the shape, time our five settings (:data:`OURS`) and the peer, print the table."""
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
    encoded = scorer.encoder.encode(pairs)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    shared = [t.index(1) for t in encoded["token_type_ids"]]
    runs = {label: _ours(scorer, *setting) for label, *setting in OURS}
    peer_name, peer = _peer(args, model)
    runs[peer_name] = peer
    timed = _interleaved(runs, pairs, args.repeats)
    rows = [(label, *timed[label]) for label in runs]
    reference = timed[peer_name][1]
    peer_rate = len(pairs) / timed[peer_name][0]
    print(
        f"# bench_causal: {args.model} with {args.layers} layers (random weights), "
        f"{len(pairs)} pairs ({args.queries} queries), {source}"
    )
    print(
        f"tokens per pair: median {statistics.median(lengths):.0f}, max {max(lengths)}; "
        f"shared prefix (instruction + query) median {statistics.median(shared):.0f} tokens; "
        f"threads {args.threads}, batch {args.batch_size}, max_length {args.max_length}, "
        f"repeats {args.repeats} (interleaved); truncated by ours {encoded['truncated']} "
        f"(the peer's limit is the model's); torch {torch.__version__}; load average at start "
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
    full, last, trimmed, prefix, grouped = (len(pairs) / r[1] for r in rows[: len(OURS)])
    print()
    print(
        f"gain from the last position only (two LM-head rows): x{last / full:.2f} over full; "
        f"from the last layer at the last token: x{trimmed / last:.2f}; "
        f"from the shared prefix on top: x{prefix / trimmed:.2f}; "
        f"from length groups on top: x{grouped / prefix:.2f}; load average at end "
        f"{os.getloadavg()[0]:.2f}"
    )
    ok = worst <= args.atol
    print(f"float32 agreement: max abs diff {worst:.1e} ({'ok' if ok else 'FAIL'})")
    # what the savings change, apart from the peer's own float32 rounding: each run against
    # ours in mode full (transformers' unmodified forward), and the scores' scale
    full_scores = rows[0][2]
    savings = max(
        abs(a - b) for _, _, scores in rows[1 : len(OURS)] for a, b in zip(scores, full_scores)
    )
    scale = max(abs(v) for v in reference)
    print(
        f"the savings against our full forward: max abs diff {savings:.1e}; the peer against "
        f"our full forward: {max(abs(a - b) for a, b in zip(reference, full_scores)):.1e}; "
        f"largest |score| {scale:.3g}"
    )
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
