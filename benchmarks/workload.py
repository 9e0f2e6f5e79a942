"""Workloads and models for the benchmarks (``bench_scorer.py``, ``bench_server.py``).

- :func:`scifact_pairs`: 8 queries x 50 BM25 candidates from SciFact dev. Each passage is the
  document title plus a leading run of its abstract's sentences whose length is drawn from a
  seeded log-normal (median about 800 characters): RAG-style chunks with a long tail of whole
  abstracts, the shape of the baseline workload (median ~167 tokens, ~2% over 512).
  ``passages="full"`` keeps whole title + abstract (median ~440 tokens).
- :func:`synthetic_pairs`: English pairs made from built-in sentences, for runs without data.
- :func:`useful_gflop` and :func:`gemm_peak_gflops`: the work a workload needs and the rate
  the machine can do it at, for the "% of GEMM peak" figures.
- :func:`build_xlmr`: a random-weight model with the shape of bge-reranker-base (XLM-RoBERTa
  base: hidden 768, 12 layers, 12 heads, FFN 3072, vocab 250,002, 514 positions), or with
  ``size="large"`` bge-reranker-v2-m3's (XLM-RoBERTa large: hidden 1024, 24 layers, 16 heads,
  FFN 4096, 8,194 positions), the GPU benchmark's model. No real XLM-R sentencepiece model is
  available offline, so its tokenizer is a Unigram model (the same algorithm as sentencepiece)
  trained with ``tokenizers`` on the SciFact corpus, 32k pieces: English text gets realistic
  token counts (close to a WordPiece tokenizer's).
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import time
from pathlib import Path

__all__ = [
    "backend_options",
    "XLMR_SHAPES",
    "build_xlmr",
    "length_stats",
    "load_corpus",
    "scifact_pairs",
    "synthetic_pairs",
    "text_of_tokens",
]

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\[])")

SYNTHETIC_QUERIES = (
    "what reduces the risk of heart attack",
    "how do rerankers reorder retrieval candidates",
    "effect of vaccination on infection rates in adults",
    "boundary layer transition at supersonic speed",
)
SYNTHETIC_SENTENCES = (
    "A cross-encoder reads the query and the passage together and returns one relevance score.",
    "Rerankers reorder the candidates that a fast first-stage retriever such as BM25 returns.",
    "Aspirin reduces fever and pain and lowers the risk of heart attack in some patients.",
    "Boundary layer transition on a flat plate at supersonic speed was measured in the tunnel.",
    "The vaccine trial enrolled four thousand adults and reported an efficacy of ninety percent.",
    "Long documents are split into chunks and each chunk is scored against the query.",
    "Fine-tuning on domain data teaches the reranker the jargon of medicine, law and finance.",
    "Mixed precision halves memory use, and bfloat16 keeps the range of float32.",
    "The giant panda is a bear native to south central China that eats bamboo.",
    "Capital gains tax applies when you sell shares or property for more than you paid.",
)


def backend_options(name: str) -> dict[str, str]:
    """Scorer options for a benchmark backend name: the scorer's backends, plus ``torch-bf16``
    and ``torch-fp16`` (the torch backend with bfloat16 / float16 weights: approximate paths for
    CPUs with bf16 hardware and for GPUs).
    """
    if name == "torch-bf16":
        return {"backend": "torch", "dtype": "bfloat16"}
    if name == "torch-fp16":
        return {"backend": "torch", "dtype": "float16"}
    return {"backend": name, "dtype": "float32"}


def load_corpus(data: Path) -> dict[str, tuple[str, str]]:
    """``{doc id: (title, text)}`` of a BEIR-style folder."""
    corpus = {}
    with open(data / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            corpus[doc["_id"]] = (doc.get("title", "") or "", doc.get("text", "") or "")
    return corpus


def _chunk(title: str, text: str, budget: float) -> str:
    sentences = _SENTENCE.split(text.strip()) if text.strip() else []
    kept: list[str] = []
    size = len(title)
    for sentence in sentences:
        if kept and size + len(sentence) > budget:
            break
        kept.append(sentence)
        size += len(sentence) + 1
    return (title + "\n" + " ".join(kept)).strip()


def scifact_pairs(
    data: Path,
    *,
    queries: int = 8,
    per_query: int = 50,
    split: str = "dev",
    passages: str = "chunks",
    seed: int = 0,
) -> list[tuple[str, str]]:
    """``queries x per_query`` (query, passage) pairs from a BEIR folder's BM25 candidates.

    Args:
        data: the SciFact folder (``corpus.jsonl``, ``queries.jsonl``, ``candidates/``).
        passages: ``"chunks"`` (title + leading sentences, seeded log-normal length) or
            ``"full"`` (title + whole abstract).
    """
    if passages not in ("chunks", "full"):
        raise ValueError(f"passages must be 'chunks' or 'full', got {passages!r}")
    corpus = load_corpus(data)
    texts = {}
    with open(data / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts[row["_id"]] = row["text"]
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    taken = 0
    with open(data / "candidates" / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            ids = row.get("ranked") or (row["pos"] + row["neg"])
            if len(ids) < per_query or row["qid"] not in texts:
                continue
            for doc_id in ids[:per_query]:
                title, text = corpus[doc_id]
                if passages == "full":
                    pairs.append((texts[row["qid"]], (title + "\n" + text).strip()))
                else:
                    budget = math.exp(rng.gauss(math.log(800), 0.7))
                    pairs.append((texts[row["qid"]], _chunk(title, text, budget)))
            taken += 1
            if taken >= queries:
                break
    return pairs


def synthetic_pairs(queries: int = 2, per_query: int = 8, seed: int = 0) -> list[tuple[str, str]]:
    """Pairs built from built-in English sentences (no data needed), 1 to 12 sentences each."""
    rng = random.Random(seed)
    pairs = []
    for q in range(queries):
        query = SYNTHETIC_QUERIES[q % len(SYNTHETIC_QUERIES)]
        for _ in range(per_query):
            n = rng.randint(1, 12)
            pairs.append((query, " ".join(rng.choice(SYNTHETIC_SENTENCES) for _ in range(n))))
    return pairs


def text_of_tokens(tokenizer: object, source: str, tokens: int) -> str:
    """A prefix of ``source`` (repeated as needed) that is ``tokens`` tokens long."""
    backend = tokenizer.backend_tokenizer  # type: ignore[attr-defined]
    backend.no_truncation()  # the scorer leaves pair truncation set on the shared backend
    text = source
    while len(backend.encode(text, add_special_tokens=False).ids) < tokens:
        text = text + " " + source
    encoding = backend.encode(text, add_special_tokens=False)
    return text[: encoding.offsets[tokens - 1][1]]


def length_stats(tokenizer: object, pairs: list[tuple[str, str]], max_length: int) -> dict:
    """Token lengths of the pairs (special tokens included, before truncation)."""
    encoded = tokenizer(  # type: ignore[operator]
        [q for q, _ in pairs], [p for _, p in pairs], truncation=False, verbose=False
    )
    lengths = [len(ids) for ids in encoded["input_ids"]]
    ordered = sorted(lengths)
    return {
        "lengths": lengths,
        "median": statistics.median(lengths),
        "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
        "over_max_length": sum(n > max_length for n in lengths),
        "real_tokens": sum(min(n, max_length) for n in lengths),
    }


def gemm_peak_gflops(threads: int, device: str = "cpu", repeats: int = 5) -> float:
    """The best rate of a square matmul: float32 2048^3 on the CPU, float16 8192^3 on CUDA."""
    import torch

    torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    size, dtype = (8192, torch.float16) if cuda else (2048, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def useful_gflop(config: dict, lengths: list[int], max_length: int) -> float:
    """2 x encoder weights x real tokens + attention (QK^T and AV), in GFLOP."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    inter = config["intermediate_size"]
    per_token = 2 * layers * (4 * hidden * hidden + 2 * hidden * inter)
    total = 0.0
    for n in lengths:
        n = min(n, max_length)
        total += per_token * n + layers * 4 * n * n * hidden
    return total / 1e9


# (hidden, layers, heads, FFN, positions): bge-reranker-base and bge-reranker-v2-m3
XLMR_SHAPES = {"base": (768, 12, 12, 3072, 514), "large": (1024, 24, 16, 4096, 8194)}


def build_xlmr(
    out_dir: Path, data: Path | None, *, size: str = "base", vocab_size: int = 32000
) -> Path:
    """Build (once) a random XLM-R-shaped cross-encoder (``size``: a key of :data:`XLMR_SHAPES`)
    with a trained Unigram tokenizer."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    from bge_rerank_plugins.testing import train_xlmr_tokenizer

    if data is not None and (data / "corpus.jsonl").exists():
        lines = [f"{t}\n{x}" for t, x in load_corpus(data).values()]
    else:
        lines = list(SYNTHETIC_SENTENCES) * 20
        vocab_size = min(vocab_size, 800)
    fast = train_xlmr_tokenizer(lines, vocab_size)
    hidden, layers, heads, ffn, positions = XLMR_SHAPES[size]
    config = XLMRobertaConfig(
        vocab_size=250002,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=positions,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,
    )
    torch.manual_seed(0)
    model = XLMRobertaForSequenceClassification(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir
