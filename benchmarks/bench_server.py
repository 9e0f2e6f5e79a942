"""Load test of the rerank server: throughput and latency with and without dynamic batching.

Starts the server itself (a subprocess bound to 127.0.0.1 only), runs N concurrent asyncio + httpx
clients that each send requests of 1 query x K passages, and reports requests/s, pairs/s, latency
percentiles and failures per server variant, then the throughput ratio of each variant to the
no-batching baseline. Every run is bounded in request count and in time, and only ever talks to
127.0.0.1.

    python benchmarks/bench_server.py                        # MiniLM cross-encoder, SciFact texts
    python benchmarks/bench_server.py --data /work/shared/data/scifact --clients 16 --requests 240
    python benchmarks/bench_server.py --variant wait2=--max-batch-wait-ms,2 --json out.json

Texts come from a BEIR-style folder (``--data``, default ``../shared/data/scifact`` when it exists:
queries and their BM25 candidates, title + abstract); otherwise from a small built-in set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import gemm_peak_gflops, length_stats, useful_gflop

HOST = "127.0.0.1"  # loopback only, by design: there is no option to change it
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scifact"

BUILTIN_PASSAGES = [
    "The giant panda is a bear native to south central China; its diet is over 99% bamboo.",
    "Pandas is an open-source Python library providing data frames and analysis tools.",
    "Red pandas are small arboreal mammals of the eastern Himalayas that eat bamboo and fruit.",
    "Beijing, the capital of China, hosts the Beijing Zoo, known for its giant pandas.",
    "Bamboo is a fast-growing grass; some species grow almost a metre in a single day.",
    "Conservation programs raised the wild giant panda population to about 1,800 animals.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "Transformers use self-attention to relate every token of a sequence to every other token.",
    "A cross-encoder reads the query and the passage together and outputs one relevance score.",
    "Mitochondria generate most of the chemical energy needed to power a cell's reactions.",
] * 3
BUILTIN_QUERIES = [
    "what do giant pandas eat?",
    "how does a cross-encoder rerank passages?",
    "where do red pandas live?",
    "what is the role of mitochondria?",
]


def split_chunks(text: str, rng: random.Random) -> list[str]:
    """RAG-style chunks: runs of 1 to 3 consecutive sentences."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    chunks, i = [], 0
    while i < len(sentences):
        k = rng.randint(1, 3)
        chunks.append(" ".join(sentences[i : i + k]))
        i += k
    return chunks


def load_requests(
    data: Path | None, docs: int, passages: str = "chunks", limit: int = 200
) -> list[tuple[str, list[str]]]:
    """(query, passages) pairs from a BEIR-style folder, or the built-in texts.

    ``passages="abstracts"``: each passage is a whole document (title + abstract);
    ``"chunks"``: the documents are cut into 1-3 sentence chunks (as a RAG index stores them)
    and the first ``docs`` chunks of the BM25 candidates are the passages.
    """
    if data is None or not (data / "candidates").is_dir():
        rng = random.Random(0)
        return [(q, rng.sample(BUILTIN_PASSAGES, docs)) for q in BUILTIN_QUERIES]
    from bge_rerank_plugins.beir import load_beir

    split_name = "dev" if (data / "candidates" / "dev.jsonl").exists() else "train"
    split = load_beir(data, split_name)
    out = []
    rng = random.Random(0)
    for qid, candidates in (split.candidates or {}).items():
        texts = [
            f"{split.corpus[i].title}\n{split.corpus[i].text}".strip()
            for i in candidates.ids
            if i in split.corpus
        ]
        if passages == "chunks":
            texts = [c for t in texts[:docs] for c in split_chunks(t, rng)]
        texts = texts[:docs]
        if qid in split.queries and len(texts) == docs:
            out.append((split.queries[qid].text, texts))
        if len(out) >= limit:
            break
    return out


def start_server(model: str, flags: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    from bge_rerank_plugins.testing import free_loopback_port

    port = free_loopback_port()
    cmd = [
        sys.executable, "-m", "bge_rerank_plugins.cli", "serve", "--model", model,
        "--host", HOST, "--port", str(port), "--log-level", "warning", *flags,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("BGE_RERANK_API_KEY", None)
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not healthy within 180 s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


async def load(
    url: str,
    requests: list[tuple[str, list[str]]],
    clients: int,
    total: int,
    max_seconds: float,
) -> dict:
    """Send ``total`` requests from ``clients`` concurrent clients (stopping at ``max_seconds``)."""
    latencies: list[float] = []
    failures = 0
    pairs = 0
    next_index = 0
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index, failures, pairs
        while next_index < total and time.monotonic() < deadline:
            query, texts = requests[next_index % len(requests)]
            next_index += 1
            started = time.perf_counter()
            try:
                r = await http.post(f"{url}/rerank", json={"query": query, "texts": texts})
                ok = r.status_code == 200 and len(r.json()) == len(texts)
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
                pairs += len(texts)
            else:
                failures += 1

    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "failures": failures,
        "seconds": elapsed,
        "req_per_s": len(latencies) / elapsed,
        "pairs_per_s": pairs / elapsed,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
    }


def batch_stats(url: str) -> str:
    """Mean requests and pairs per merged batch, from the server's metrics."""
    text = httpx.get(f"{url}/metrics").text
    values = {}
    for line in text.splitlines():
        for name in ("batch_requests_sum", "batch_requests_count", "batch_pairs_sum"):
            if line.startswith(f"bge_rerank_{name} "):
                values[name] = float(line.split()[1])
    count = values.get("batch_requests_count", 0)
    if not count:
        return "-"
    return (
        f"{values['batch_requests_sum'] / count:.1f} req / "
        f"{values['batch_pairs_sum'] / count:.0f} pairs"
    )


def model_only_ceiling(
    model: str, requests: list[tuple[str, list[str]]], count: int, group: int
) -> dict[str, float]:
    """The most merging can give the model itself, with no HTTP and no queueing.

    Scores ``count`` requests in-process with the scorer the server builds (default settings)
    twice: one request per call (what the no-batching server runs) and ``group`` requests
    merged per call (the best case of the batcher at ``group`` concurrent clients). Returns
    pairs/s of both, and each as a share of the CPU's float32 GEMM peak (useful work only, as
    in ``bench_scorer.py``): a path already near the peak leaves merging little to win.
    """
    import torch

    from bge_rerank_plugins.server import ServerConfig

    scorer = ServerConfig(model=model).build_scorer()
    work = [requests[i % len(requests)] for i in range(count)]
    scorer.score_pairs([(work[0][0], p) for p in work[0][1]])  # warm-up
    pairs = sum(len(docs) for _, docs in work)
    start = time.perf_counter()
    for query, docs in work:
        scorer.score_pairs([(query, d) for d in docs])
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, len(work), group):
        scorer.score_pairs([(q, d) for q, docs in work[i : i + group] for d in docs])
    merged_s = time.perf_counter() - start

    all_pairs = [(q, d) for q, docs in work for d in docs]
    lengths = length_stats(scorer.tokenizer, all_pairs, scorer.model_max_length)["lengths"]
    gflop = useful_gflop(scorer.model.config.to_dict(), lengths, scorer.resolve_max_length(lengths))
    peak = gemm_peak_gflops(torch.get_num_threads())
    return {
        "single_pairs_per_s": pairs / single_s,
        "merged_pairs_per_s": pairs / merged_s,
        "single_peak_share": gflop / single_s / peak,
        "merged_peak_share": gflop / merged_s / peak,
        "gemm_peak_gflops": peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model dir (default: MiniLM cross-encoder)")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.exists() else None
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--docs", type=int, default=20, help="passages per request")
    parser.add_argument(
        "--passages",
        choices=["chunks", "abstracts"],
        default="chunks",
        help="chunks: 1-3 sentence chunks of the candidate documents (RAG-style, default); "
        "abstracts: whole title + abstract documents (long: most hit max_length)",
    )
    parser.add_argument(
        "--server-flags",
        default="",
        help="flags added to every variant, comma-separated, e.g. --threads,1,--max-length,256",
    )
    parser.add_argument("--requests", type=int, default=160, help="requests per variant (cap)")
    parser.add_argument("--max-seconds", type=float, default=120, help="time cap per variant")
    parser.add_argument("--warmup", type=int, default=4, help="requests before measuring")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAG,FLAG",
        help="extra server variant, flags comma-separated, e.g. "
        "wait20=--max-batch-wait-ms,20,--max-batch-pairs,640",
    )
    parser.add_argument("--only", nargs="*", default=None, help="run only these variant names")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--model-only",
        action="store_true",
        help="also time the scorer in-process, one request per call vs --clients requests "
        "merged per call: the ceiling of the batching gain on this machine",
    )
    args = parser.parse_args()
    if not 1 <= args.clients <= 256:
        parser.error("--clients must be between 1 and 256")
    if not 1 <= args.requests <= 10_000:
        parser.error("--requests must be between 1 and 10000")

    model = args.model
    if model is None:
        from bge_rerank_plugins.minilm import build_minilm_cross_encoder

        model = str(build_minilm_cross_encoder(Path(tempfile.gettempdir()) / "bge-bench-minilm"))
    requests = load_requests(args.data, args.docs, args.passages)
    source = str(args.data) if args.data and (args.data / "candidates").is_dir() else "built-in"
    common = [f for f in args.server_flags.split(",") if f]
    print(
        f"model={model} data={source} ({len(requests)} queries, {args.passages}) "
        f"clients={args.clients} docs/request={args.docs} requests/variant<={args.requests} "
        f"cpu={os.cpu_count()} common flags={' '.join(common) or '-'}"
    )

    variants = {
        "no-batching": ["--no-batching", "--max-batch-wait-ms", "0"],
        "batching": [],
    }
    for spec in args.variant:
        name, _, flags = spec.partition("=")
        variants[name] = [f for f in flags.split(",") if f]
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only}

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in variants.items():
            proc, url = start_server(model, common + flags, Path(tmp) / f"{name}.log")
            try:
                asyncio.run(load(url, requests, min(args.clients, args.warmup), args.warmup, 60))
                row = asyncio.run(
                    load(url, requests, args.clients, args.requests, args.max_seconds)
                )
                row["batches"] = batch_stats(url)
                row["flags"] = " ".join(flags) or "(defaults)"
            finally:
                stop_server(proc)
            results[name] = row
            print(f"  {name}: {row['pairs_per_s']:.1f} pairs/s, {row['failures']} failures")

    base = results.get("no-batching", {}).get("pairs_per_s")
    print()
    print(
        "| variant | server flags | requests | failed | req/s | pairs/s | p50 ms | p95 ms "
        "| p99 ms | mean batch (incl. warm-up) | vs no-batching |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio = f"{r['pairs_per_s'] / base:.2f}x" if base else "-"
        print(
            f"| {name} | `{r['flags']}` | {r['requests']} | {r['failures']} | "
            f"{r['req_per_s']:.2f} | {r['pairs_per_s']:.1f} | {r['p50_ms']:.0f} | "
            f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['batches']} | {ratio} |"
        )
    if args.model_only:
        ceiling = model_only_ceiling(model, requests, args.requests, args.clients)
        results["model-only"] = ceiling
        single, merged = ceiling["single_pairs_per_s"], ceiling["merged_pairs_per_s"]
        print(
            f"\nmodel only, in-process, {args.requests} requests: one per call "
            f"{single:.1f} pairs/s ({ceiling['single_peak_share']:.0%} of the "
            f"{ceiling['gemm_peak_gflops']:.0f} GFLOP/s GEMM peak), {args.clients} merged per "
            f"call {merged:.1f} pairs/s ({ceiling['merged_peak_share']:.0%}): "
            f"{merged / single:.2f}x, the most merging can give here"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if any(r.get("failures") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
