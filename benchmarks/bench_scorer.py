"""Throughput, memory, latency and score agreement of CrossEncoderScorer against its peers.

    python benchmarks/bench_scorer.py                      # MiniLM cross-encoder, 400 pairs
    python benchmarks/bench_scorer.py --model xlmr-base    # bge-reranker-base shape
    python benchmarks/bench_scorer.py --model xlmr-large --device cuda --queries 40 --pairs 4000 \
        --backends torch,torch-fp16,torch-bf16 --peers st,flag   # v2-m3 shape on a GPU
    python benchmarks/bench_scorer.py --model DIR --pairs 100 --repeats 3
    python benchmarks/bench_scorer.py --quick              # CI: scores agree? (under a minute)
    python benchmarks/bench_scorer.py --model qwen3-shape --pairs 96 --queries 4  # causal LMs

Peers: sentence-transformers ``CrossEncoder.predict``, FlagEmbedding ``FlagReranker
.compute_score`` and a naive Hugging Face loop (input order, every pair padded to max_length).
On a CUDA ``--device`` the peers run in float16 (``FlagReranker(use_fp16=True)``,
``CrossEncoder(model_kwargs={"torch_dtype": torch.float16})``) unless ``--peer-dtype float32``,
the GEMM peak is a float16 one, and peak GPU memory is reported next to peak RSS.
Every library scores the same pairs with the same max_length, batch size and thread count, each
in its own subprocess (so peak RSS is its own), timed after a warm-up; the figure is the median
of ``--repeats`` runs. "% of peak" counts useful FLOPs only (2 x encoder weights x real tokens,
plus attention) against a float32 2048^3 matmul measured in the same run.

Workload (``--data``, default ``../shared/data/scifact``): 8 SciFact dev queries x 50 BM25
candidates, title + leading sentences (see ``workload.py``); without the folder, built-in
synthetic English pairs. ``--quick`` scores a few pairs in-process and exits 1 when the float32
scores of any two libraries differ by more than ``--atol`` (raw logits).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from workload import (  # noqa: E402
    backend_options,
    build_xlmr,
    gemm_peak_gflops,
    length_stats,
    load_corpus,
    scifact_pairs,
    synthetic_pairs,
    text_of_tokens,
    useful_gflop,
)

PEERS = ("st", "flag", "hf")
#: Random causal-LM reranker shapes, timed by benchmarks/bench_causal.py against their peer.
CAUSAL_SHAPES = ("qwen3-shape", "gemma-shape")
LABELS = {
    "ours": "bge-rerank-plugins",
    "st": "sentence-transformers predict",
    "flag": "FlagEmbedding compute_score",
    "hf": "naive HF (pad to max_length)",
}


# ----------------------------------------------------------------------------- workers
def _peak_rss_mb() -> float:
    """This process's own peak RSS in MB.

    Linux's ``ru_maxrss`` carries the parent's RSS at fork time over the exec, so a worker
    spawned by a large parent (one that just built a big model) would report at least the
    parent's size; ``VmHWM`` is the high-water mark of this process's own memory.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _approximate(label: str) -> bool:
    """Backends whose scores are not expected within 1e-4 of fp32 (quantised, bf16 or fp16)."""
    return "int8" in label or "bf16" in label or "fp16" in label


def _make_scorer_fn(spec: dict):
    """(load seconds, fn(pairs) -> raw logits) for one library."""
    import torch

    lib, model_dir = spec["lib"], spec["model_dir"]
    ml, bs = spec["max_length"], spec["batch_size"]
    device = spec.get("device", "cpu")
    peer_fp16 = spec.get("peer_dtype") == "float16"
    start = time.perf_counter()
    if lib == "ours":
        from bge_rerank_plugins import CrossEncoderScorer

        scorer = CrossEncoderScorer(
            model_dir,
            device=device,
            max_length=ml,
            batch_size=bs,
            token_budget=spec.get("token_budget"),
            normalize=False,
            backend=spec.get("backend", "torch"),
            dtype=spec.get("dtype", "float32"),
            cache_size=spec.get("cache_size", 0),
            show_progress_bar=False,
        )

        def fn(pairs):
            return scorer.score_pairs(pairs)

        fn.scorer = scorer  # type: ignore[attr-defined]
    elif lib == "st":
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(
            model_dir,
            max_length=ml,
            device=device,
            model_kwargs={"torch_dtype": torch.float16} if peer_fp16 else None,
        )
        identity = torch.nn.Identity()

        def fn(pairs):
            out = model.predict(
                pairs, batch_size=bs, activation_fn=identity, show_progress_bar=False
            )
            return [float(x) for x in out]

        fn.network = model.model  # type: ignore[attr-defined]
    elif lib == "flag":
        from FlagEmbedding import FlagReranker

        # FlagEmbedding wants an indexed CUDA device ("cuda:0"), not "cuda"
        flag_device = "cuda:0" if device == "cuda" else device
        model = FlagReranker(
            model_dir, use_fp16=peer_fp16, devices=flag_device, batch_size=bs, max_length=ml
        )

        def fn(pairs):
            out = model.compute_score(pairs, batch_size=bs, max_length=ml, normalize=False)
            return [float(x) for x in (out if isinstance(out, list) else [out])]

        fn.network = model.model  # type: ignore[attr-defined]
    elif lib == "hf":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, torch_dtype=torch.float16 if peer_fp16 else torch.float32
        )
        model = model.to(device).eval()

        def fn(pairs):
            scores = []
            with torch.inference_mode():
                for i in range(0, len(pairs), bs):
                    chunk = pairs[i : i + bs]
                    enc = tokenizer(
                        [q for q, _ in chunk],
                        [p for _, p in chunk],
                        padding="max_length",
                        truncation="only_second",
                        max_length=ml,
                        return_tensors="pt",
                    ).to(device)
                    scores += model(**enc).logits[:, 0].float().tolist()
            return scores

        fn.network = model  # type: ignore[attr-defined]
    else:
        raise ValueError(f"unknown library {lib!r}")
    return time.perf_counter() - start, fn


def _input_recorder(rows: list[list[int]]):
    """A forward pre-hook that keeps each row's token ids (padding dropped) a peer's model gets:
    the peers tokenize by their own rules, and a score can only match ours for the same ids."""

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is None:
            return
        for i, row in enumerate(ids):
            keep = row if mask is None else row[mask[i].bool()]
            rows.append(keep.tolist())

    return record


def _pairs_with_other_inputs(tokenizer, pairs, max_length: int, rows: list[list[int]]) -> list[int]:
    """Indices of pairs whose token ids (query + passage, passage truncated) no recorded row
    equals: the pairs that a peer fed its model as other tokens than the text's own."""
    from collections import Counter

    expected = tokenizer(
        [q for q, _ in pairs],
        [p for _, p in pairs],
        truncation="only_second",
        max_length=max_length,
    )["input_ids"]
    recorded = Counter(tuple(r) for r in rows)
    other = []
    for i, ids in enumerate(expected):
        if recorded[tuple(ids)] > 0:
            recorded[tuple(ids)] -= 1
        else:
            other.append(i)
    return other


def run_worker(spec: dict) -> dict:
    """Load one library, warm up, time the repeats; optional latency, cache and scaling runs."""
    import torch

    torch.set_num_threads(spec["threads"])
    pairs = [tuple(p) for p in spec["pairs"]]
    load_s, fn = _make_scorer_fn(spec)
    fn(pairs[: min(len(pairs), 16)])  # warm-up (and ONNX export / quantization if first use)
    times, scores = [], []
    inputs: list[list[int]] = []
    for repeat in range(spec["repeats"]):
        hook = None
        if repeat == spec["repeats"] - 1 and hasattr(fn, "network"):
            # on the encoder: sentence-transformers calls it and the head apart
            encoder = fn.network.base_model
            hook = encoder.register_forward_pre_hook(_input_recorder(inputs), with_kwargs=True)
        t0 = time.perf_counter()
        scores = fn(pairs)
        times.append(time.perf_counter() - t0)
        if hook is not None:
            hook.remove()
    result = {
        "lib": spec["lib"],
        "backend": spec.get("label", spec.get("backend", "torch")),
        "load_s": load_s,
        "times": times,
        "seconds": statistics.median(times),
        "scores": scores,
        "model_inputs": inputs,
    }
    if spec.get("latency_calls"):
        small = pairs[: spec.get("latency_pairs", 20)]
        for _ in range(3):
            fn(small)
        lat = []
        for _ in range(spec["latency_calls"]):
            t0 = time.perf_counter()
            fn(small)
            lat.append(time.perf_counter() - t0)
        result["latency_p50_ms"] = 1000 * statistics.median(lat)
    if spec.get("cache_check") and spec["lib"] == "ours":
        from bge_rerank_plugins import CrossEncoderScorer

        base = fn.scorer  # type: ignore[attr-defined]
        cached = CrossEncoderScorer(
            spec["model_dir"],
            device=spec.get("device", "cpu"),
            max_length=spec["max_length"],
            batch_size=spec["batch_size"],
            normalize=False,
            backend=base.backend,
            cache_size=4 * len(pairs),
        )
        t0 = time.perf_counter()
        first = cached.score_pairs(pairs)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = cached.score_pairs(pairs)
        warm = time.perf_counter() - t0
        result["cache"] = {"cold_s": cold, "warm_s": warm, "same": first == second}
    if spec.get("scaling"):
        result["scaling"] = run_scaling(fn.scorer, spec)  # type: ignore[attr-defined]
    result["peak_rss_mb"] = _peak_rss_mb()
    if str(spec.get("device", "cpu")).startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def run_scaling(scorer, spec: dict) -> dict:
    """Time vs number of passages and vs passage length (2,048 tokens through chunking)."""
    from bge_rerank_plugins.chunking import score_chunked

    query = spec["pairs"][0][0]
    docs = spec["scaling_docs"]
    rows = []
    for n in spec.get("scaling_counts", (10, 100, 1000)):
        passages = [docs[i % len(docs)] for i in range(n)]
        t0 = time.perf_counter()
        scorer.score(query, passages)
        seconds = time.perf_counter() - t0
        rows.append({"kind": "passages", "n": n, "tokens": None, "seconds": seconds})
    source = " ".join(docs[:50])
    per = spec.get("scaling_length_passages", 16)
    for tokens in (128, 512, 2048):
        text = text_of_tokens(scorer.tokenizer, source, tokens)
        passages = [text] * per
        # Different passages: shift each by a few words so nothing is trivially repeated.
        passages = [f"{i} {text}" for i in range(per)]
        t0 = time.perf_counter()
        if tokens <= 128:
            scorer.score(query, passages)
            windows = per
        else:
            scores = score_chunked(scorer, query, passages, overlap=32)
            windows = scores.windows
        seconds = time.perf_counter() - t0
        rows.append(
            {"kind": "length", "n": per, "tokens": tokens, "seconds": seconds, "windows": windows}
        )
    return {"rows": rows}


def _spawn(spec: dict, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            TOKENIZERS_PARALLELISM="false",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", str(spec_path), "--out", str(out_path)],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.splitlines()[-15:])
            print(f"  ! {spec['lib']}/{spec.get('backend')} failed:\n{tail}", file=sys.stderr)
            return {"lib": spec["lib"], "backend": spec.get("backend"), "error": tail}
        return json.loads(out_path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- main side
def resolve_model(name: str, data: Path | None) -> Path:
    cache = ROOT / ".cache" / "bench-models"
    if name == "minilm":
        from bge_rerank_plugins.minilm import build_minilm_cross_encoder

        return Path(build_minilm_cross_encoder(cache / "minilm-ce"))
    if name in ("xlmr-base", "xlmr-large"):
        return build_xlmr(cache / name, data, size=name.partition("-")[2])
    path = Path(name)
    if not (path / "config.json").exists():
        raise SystemExit(
            f"--model must be minilm, xlmr-base, xlmr-large or a model directory, got {name!r}"
        )
    return path


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def _max_abs(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b)) if a and b else float("nan")


def _per_query_spearman(a: list[float], b: list[float], per_query: int) -> float:
    from scipy.stats import spearmanr

    values = []
    for i in range(0, len(a), per_query):
        values.append(float(spearmanr(a[i : i + per_query], b[i : i + per_query]).statistic))
    return min(values)


def _same_order(a: list[float], b: list[float], per_query: int) -> tuple[int, int]:
    """(queries whose passages a and b sort into the same order, queries)."""

    def order(scores: list[float]) -> list[int]:
        return sorted(range(len(scores)), key=lambda i: -scores[i])

    same = total = 0
    for i in range(0, len(a), per_query):
        total += 1
        same += order(a[i : i + per_query]) == order(b[i : i + per_query])
    return same, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="minilm",
        help="minilm, xlmr-base (bge-reranker-base shape), xlmr-large (bge-reranker-v2-m3 "
        "shape), qwen3-shape (Qwen3-Reranker-0.6B shape, vs sentence-transformers), "
        "gemma-shape (bge-reranker-v2-gemma shape, vs FlagEmbedding) or a model dir",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (every library)")
    parser.add_argument(
        "--peer-dtype",
        choices=("float32", "float16"),
        default=None,
        help="the peers' dtype (default: float16 on CUDA, float32 on the CPU)",
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--pairs", type=int, default=400, help="8 queries x pairs/8 passages")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--passages", choices=("chunks", "full"), default="chunks")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", default="st,flag,hf", help="comma list of st, flag, hf")
    parser.add_argument(
        "--backends",
        default="torch,onnx,onnx-int8,torch-int8",
        help=(
            "our backends to time (torch, onnx, onnx-int8, torch-int8, and torch-bf16 / "
            "torch-fp16: torch with bfloat16 / float16 weights); NAME@N runs NAME with batch "
            "size N (e.g. onnx@8)"
        ),
    )
    parser.add_argument("--latency-calls", type=int, default=50, help="0 skips the latency run")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    parser.add_argument("--scaling-counts", default="10,100,1000", help="passage counts")
    parser.add_argument("--atol", type=float, default=1e-4, help="float32 agreement tolerance")
    parser.add_argument("--quick", action="store_true", help="agreement check only, < 1 min")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument(
        "--layers", type=int, default=4, help="decoder layers of qwen3-shape / gemma-shape"
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker.read_text(encoding="utf-8"))
        args.out.write_text(json.dumps(run_worker(spec)), encoding="utf-8")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.model in CAUSAL_SHAPES:  # causal-LM rerankers: benchmarks/bench_causal.py
        from bench_causal import run_causal

        pairs, source = _pairs(args, max(1, args.pairs // args.queries))
        return run_causal(args, pairs, source, ROOT)
    return run_quick(args) if args.quick else run_full(args)


def _pairs(args, per_query: int) -> tuple[list[tuple[str, str]], str]:
    if args.data and (args.data / "corpus.jsonl").exists():
        pairs = scifact_pairs(
            args.data, queries=args.queries, per_query=per_query, passages=args.passages
        )
        return pairs, f"SciFact dev ({args.passages})"
    return synthetic_pairs(args.queries, per_query), "synthetic English"


def run_quick(args) -> int:
    """Score a few pairs with every installed library in-process; fail if they disagree."""
    import importlib.util

    model_dir = resolve_model(args.model, args.data)
    pairs, source = _pairs(argparse.Namespace(**{**vars(args), "queries": 2}), 8)
    libs = [("ours", "torch")]
    if importlib.util.find_spec("onnxruntime"):
        libs.append(("ours", "onnx"))
    for peer in ("st", "flag"):
        module = {"st": "sentence_transformers", "flag": "FlagEmbedding"}[peer]
        if peer in args.peers.split(",") and importlib.util.find_spec(module):
            libs.append((peer, "torch"))
    results = {}
    for lib, backend in libs:
        spec = {
            "lib": lib,
            "backend": backend,
            "model_dir": str(model_dir),
            "pairs": pairs,
            "max_length": args.max_length,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "repeats": 1,
            "device": args.device,
        }
        results[(lib, backend)] = run_worker(spec)
    reference = results[("ours", "torch")]["scores"]
    print(f"quick check: {len(pairs)} pairs ({source}), model {model_dir}")
    print("| library | backend | seconds | max abs diff vs ours/torch |")
    print("|---|---|---|---|")
    worst = 0.0
    for (lib, backend), res in results.items():
        diff = _max_abs(reference, res["scores"])
        worst = max(worst, diff)
        print(f"| {LABELS[lib]} | {backend} | {res['seconds']:.2f} | {diff:.2e} |")
    ok = worst <= args.atol
    print(f"agreement: max abs diff {worst:.2e} {'<=' if ok else '>'} atol {args.atol:g}")
    return 0 if ok else 1


def run_full(args) -> int:
    import torch

    load = os.getloadavg()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: this torch sees no CUDA GPU; use --device cpu")
    peer_dtype = args.peer_dtype or ("float16" if cuda else "float32")
    model_dir = resolve_model(args.model, args.data)
    per_query = max(1, args.pairs // args.queries)
    pairs, source = _pairs(args, per_query)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.backend_tokenizer.no_truncation()
    stats = length_stats(tokenizer, pairs, args.max_length)
    gflop = useful_gflop(config, stats["lengths"], args.max_length)
    peak = gemm_peak_gflops(args.threads, args.device)
    print(f"# bench_scorer: model {args.model} ({model_dir.name}), {len(pairs)} pairs, {source}")
    print(
        f"pair tokens: median {stats['median']:.0f}, p95 {stats['p95']}, max {stats['max']}, "
        f"{stats['over_max_length']} over {args.max_length}; real tokens "
        f"{stats['real_tokens']}; useful work {gflop:.0f} GFLOP"
    )
    print(
        f"threads {args.threads}, batch {args.batch_size}, max_length {args.max_length}, "
        f"repeats {args.repeats}; torch {torch.__version__}; device {_device_name(args.device)}; "
        f"GEMM peak {peak:.0f} GFLOP/s ({'float16' if cuda else 'float32'}); "
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} "
        "CPUs"
    )
    base = {
        "model_dir": str(model_dir),
        "pairs": pairs,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "token_budget": args.token_budget,
        "threads": args.threads,
        "repeats": args.repeats,
        "device": args.device,
        "peer_dtype": peer_dtype,
    }
    latency_pairs = pairs[:20]
    runs = []
    for entry in [b for b in args.backends.split(",") if b]:
        backend, _, batch = entry.partition("@")
        spec = {**base, "lib": "ours", **backend_options(backend)}
        if batch:
            spec["batch_size"] = int(batch)
        if batch or spec["backend"] != backend:
            spec["label"] = entry
        if entry == "torch":
            spec["cache_check"] = True
        if args.latency_calls and backend in ("torch", "onnx", "onnx-int8", "torch-fp16"):
            spec["latency_calls"] = args.latency_calls
        print(f"  running ours/{backend} ...", file=sys.stderr, flush=True)
        runs.append(_spawn(spec, args.threads))
    for peer in [p for p in args.peers.split(",") if p]:
        spec = {**base, "lib": peer}
        if peer_dtype == "float16":
            spec["label"] = "torch-fp16"
        if peer == "st" and args.latency_calls:
            spec["latency_calls"] = args.latency_calls
        print(f"  running {peer} ...", file=sys.stderr, flush=True)
        runs.append(_spawn(spec, args.threads))
    ok_runs = [r for r in runs if "error" not in r]
    # the reference of the Spearman column: our exact torch run (labels carry "@batch")
    ours_fp32 = next(
        (r for r in ok_runs if r["lib"] == "ours" and r["backend"].partition("@")[0] == "torch"),
        None,
    )
    peers = {r["lib"]: r for r in ok_runs if r["lib"] != "ours"}
    print()
    head = "| library | backend | pairs/s |" + "".join(f" x {p} |" for p in peers)
    head += " % GEMM peak | peak RSS MB |" + (" peak GPU MB |" if cuda else "")
    head += "".join(f" max abs diff vs {p} |" for p in peers)
    head += " min per-query Spearman vs ours fp32 | queries in ours-fp32 order |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    worst_fp32 = 0.0
    for r in ok_runs:
        rate = len(pairs) / r["seconds"]
        cells = [LABELS[r["lib"]], r["backend"], f"{rate:.1f}"]
        cells += [f"{rate / (len(pairs) / p['seconds']):.2f}" for p in peers.values()]
        cells.append(f"{100 * gflop / r['seconds'] / peak:.0f}%")
        cells.append(f"{r['peak_rss_mb']:.0f}")
        if cuda:
            cells.append(f"{r.get('peak_gpu_mb', float('nan')):.0f}")
        for p in peers.values():
            diff = _max_abs(r["scores"], p["scores"])
            cells.append(f"{diff:.1e}")
            if not _approximate(r["backend"]) and not _approximate(p["backend"]):
                worst_fp32 = max(worst_fp32, diff)
        if ours_fp32:
            rho = _per_query_spearman(ours_fp32["scores"], r["scores"], per_query)
            same, total = _same_order(ours_fp32["scores"], r["scores"], per_query)
            cells += [f"{rho:.4f}", f"{same}/{total}"]
        else:
            cells += ["-", "-"]
        print("| " + " | ".join(cells) + " |")
    print()
    for p in peers.values():
        if not p.get("model_inputs"):
            continue
        other = _pairs_with_other_inputs(tokenizer, pairs, args.max_length, p["model_inputs"])
        if other and ours_fp32:
            differing = set(other)
            rest = [i for i in range(len(pairs)) if i not in differing]
            diff = _max_abs([ours_fp32["scores"][i] for i in rest], [p["scores"][i] for i in rest])
            print(
                f"{LABELS[p['lib']]} fed its model other token ids than the pair text's own for "
                f"{len(other)} of {len(pairs)} pairs (#{', #'.join(map(str, other[:5]))}); over "
                f"the other pairs its max abs diff vs ours fp32 is {diff:.1e}"
            )
    lat = {
        f"{LABELS[r['lib']]} ({r['backend']})": r["latency_p50_ms"]
        for r in ok_runs
        if "latency_p50_ms" in r
    }
    if lat:
        st_lat = peers.get("st", {}).get("latency_p50_ms")
        print(
            f"small requests: 1 query x {len(latency_pairs)} passages, p50 of "
            f"{args.latency_calls} calls"
        )
        print("| library | p50 ms | vs ST |")
        print("|---|---|---|")
        for name, ms in lat.items():
            ratio = f"{ms / st_lat:.2f}" if st_lat else "-"
            print(f"| {name} | {ms:.0f} | {ratio} |")
        print()
    if ours_fp32 and "cache" in ours_fp32:
        c = ours_fp32["cache"]
        print(
            f"score cache: first pass {c['cold_s']:.2f} s, repeat {1000 * c['warm_s']:.1f} ms "
            f"({c['cold_s'] / c['warm_s']:.0f}x faster), same scores: {c['same']}"
        )
        print()
    if not args.no_scaling and ok_runs:
        best = max(
            (r for r in ok_runs if r["lib"] == "ours" and not _approximate(r["backend"])),
            key=lambda r: len(pairs) / r["seconds"],
            default=None,
        )
        if best is not None:
            print_scaling(args, base, best["backend"])
    if args.json:
        args.json.write_text(json.dumps({"stats": {**stats, "lengths": None}, "runs": runs}))
    ok = worst_fp32 <= args.atol
    print(
        f"float32 agreement: max abs diff {worst_fp32:.1e} ({'ok' if ok else 'FAIL'}, "
        f"atol {args.atol:g}); load average at end {os.getloadavg()[0]:.2f}"
    )
    return 0 if ok else 1


def print_scaling(args, base: dict, label: str) -> None:
    backend, _, batch = label.partition("@")
    docs = []
    if args.data and (args.data / "corpus.jsonl").exists():
        docs = [f"{t}\n{x}".strip() for t, x in list(load_corpus(args.data).values())[:1000]]
    else:
        docs = [p for _, p in synthetic_pairs(4, 50)]
    spec = {
        **base,
        "lib": "ours",
        "backend": backend,
        "repeats": 1,
        "pairs": base["pairs"][:16],
        "scaling": True,
        "scaling_docs": docs,
        "scaling_counts": [int(n) for n in args.scaling_counts.split(",")],
    }
    if batch:
        spec["batch_size"] = int(batch)
    print(f"  running scaling (ours/{backend}) ...", file=sys.stderr, flush=True)
    res = _spawn(spec, args.threads)
    if "error" in res:
        return
    rows = res["scaling"]["rows"]
    print(
        f"scaling (ours, backend {backend}): time vs number of passages (whole abstracts, "
        f"max_length {args.max_length})"
    )
    print("| passages | seconds | ms per passage |")
    print("|---|---|---|")
    for row in rows:
        if row["kind"] == "passages":
            print(f"| {row['n']} | {row['seconds']:.2f} | {1000 * row['seconds'] / row['n']:.0f} |")
    print()
    print(
        "time vs passage length (16 passages; 2,048 tokens scored as overlapping 512-token "
        "windows, max aggregated)"
    )
    print("| passage tokens | windows | seconds | ms per passage | ms per 1k passage tokens |")
    print("|---|---|---|---|---|")
    for row in rows:
        if row["kind"] == "length":
            per = 1000 * row["seconds"] / row["n"]
            print(
                f"| {row['tokens']} | {row['windows']} | {row['seconds']:.2f} | {per:.0f} | "
                f"{1000 * per / row['tokens']:.0f} |"
            )
    print()


if __name__ == "__main__":
    sys.exit(main())
