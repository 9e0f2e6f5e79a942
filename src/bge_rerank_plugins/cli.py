"""The ``bge-rerank`` command line: subcommands that compose the library; no logic of their own.

Each subcommand is registered by an ``_add_<name>`` function below.

    bge-rerank score --model DIR --query "..." passage1 passage2 ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _add_score(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("score", help="score and rank passages against one query")
    parser.add_argument("--model", default="BAAI/bge-reranker-v2-m3", help="Hub id or directory")
    parser.add_argument("--query", required=True)
    parser.add_argument("passages", nargs="+", help="passages to rank")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--raw", action="store_true", help="print raw logits, not sigmoid scores")
    parser.add_argument("--max-length", default=None, help="an int or 'auto'")
    parser.add_argument("--device", default=None)
    _add_backend(parser)
    parser.set_defaults(handler=_run_score)


def _add_backend(parser: argparse.ArgumentParser) -> None:
    from .backends import BACKENDS

    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="torch (exact), onnx (exact, needs the onnx extra), torch-int8 or onnx-int8 "
        "(approximate, about 2x faster on CPU; see docs/benchmarks.md)",
    )


def _run_score(args: argparse.Namespace) -> int:
    from .scorer import CrossEncoderScorer

    max_length = args.max_length
    if max_length is not None and max_length != "auto":
        max_length = int(max_length)
    scorer = CrossEncoderScorer(
        args.model,
        device=args.device,
        max_length=max_length,
        normalize=not args.raw,
        backend=args.backend,
    )
    for ranked in scorer.rank(args.query, args.passages, top_k=args.top_k):
        print(
            json.dumps(
                {"index": ranked.index, "score": ranked.score, "text": ranked.passage},
                ensure_ascii=False,
            )
        )
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="HTTP rerank server (TEI /rerank and Cohere /v1/rerank, /v2/rerank endpoints)",
        description="Needs the serve extra: pip install 'bge-rerank-plugins[serve]'.",
    )
    parser.add_argument("--model", default="BAAI/bge-reranker-v2-m3", help="Hub id or directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto")
    _add_backend(parser)
    parser.add_argument("--max-length", default=None, help="an int or 'auto'")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="most pairs per pass (default 8 CPU, 32 GPU)"
    )
    parser.add_argument(
        "--max-batch-pairs",
        type=int,
        default=512,
        help="most pairs merged from concurrent requests into one scorer call",
    )
    parser.add_argument(
        "--max-batch-wait-ms",
        type=float,
        default=100.0,
        help="longest wait for more requests to merge (0: merge only what is queued)",
    )
    parser.add_argument(
        "--batch-wait-fraction",
        type=float,
        default=0.1,
        help="wait this fraction of the recent model time per batch, capped by "
        "--max-batch-wait-ms (0: always wait the cap)",
    )
    parser.add_argument(
        "--no-batching", action="store_true", help="score each request on its own (baseline)"
    )
    parser.add_argument("--max-documents", type=int, default=1000, help="per request")
    parser.add_argument("--max-text-chars", type=int, default=20_000, help="per query/document")
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' (default: $BGE_RERANK_API_KEY, if set)",
    )
    parser.add_argument("--served-model-name", default=None, help="name reported by /info")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: one per core)"
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from .server import ServerConfig, run_server
    except ImportError as error:
        print(
            f"bge-rerank serve needs the serve extra ({error.name} is missing): "
            "pip install 'bge-rerank-plugins[serve]'",
            file=sys.stderr,
        )
        return 2
    max_length = args.max_length
    if max_length is not None and max_length != "auto":
        max_length = int(max_length)
    config = ServerConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        max_length=max_length,
        batch_size=args.batch_size,
        max_batch_pairs=args.max_batch_pairs,
        max_batch_wait_ms=args.max_batch_wait_ms,
        batch_wait_fraction=args.batch_wait_fraction or None,
        batching=not args.no_batching,
        max_documents=args.max_documents,
        max_text_chars=args.max_text_chars,
        api_key=args.api_key,
        served_model_name=args.served_model_name,
        torch_threads=args.threads,
    )
    run_server(config, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="rerank a BEIR-style split with one or more models; Hit/MRR/nDCG/Recall@K",
        description="Rerank each query's first-stage candidates with each --model and report "
        "Hit@K, MRR@K, nDCG@K and Recall@K next to the first-stage order. Writes table.md, "
        "metrics.json and chart.png to --out.",
    )
    parser.add_argument("--data", required=True, help="BEIR-style folder (corpus, queries, qrels)")
    parser.add_argument("--split", default="dev", help="qrels split (default: dev)")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[LABEL=]MODEL",
        help="Hub id or directory; repeat to compare models; LABEL= names the column",
    )
    parser.add_argument("--top-k", type=int, default=30, help="candidates reranked per query")
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument(
        "--candidates",
        choices=["auto", "given", "bm25"],
        default="auto",
        help="given candidates file, BM25 over the corpus, or auto (given when present)",
    )
    parser.add_argument("--ks", default="1,3,5,10", help="metric cut-offs, comma-separated")
    parser.add_argument(
        "--relevance-threshold", type=float, default=1, help="lowest grade counted as relevant"
    )
    parser.add_argument(
        "--template", default=None, help="document fields, e.g. '{title}\\n{text}' (default)"
    )
    parser.add_argument("--max-length", default=None, help="an int or 'auto'")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 CPU, 32 GPU")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="folder for table.md, metrics.json, chart.png")
    parser.add_argument("--no-chart", action="store_true", help="skip chart.png")
    parser.set_defaults(handler=_run_evaluate)


def _model_arg(value: str) -> tuple[str | None, str]:
    label, sep, path = value.partition("=")
    if sep and label and "/" not in label and os.sep not in label and path:
        return label, path
    return None, value


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_models
    from .scorer import CrossEncoderScorer

    max_length = args.max_length
    if max_length is not None and max_length != "auto":
        max_length = int(max_length)
    template = args.template.replace("\\n", "\n") if args.template else None
    ks = tuple(int(k) for k in args.ks.split(",") if k.strip())
    models: dict[str, CrossEncoderScorer] = {}
    for value in args.model:
        label, path = _model_arg(value)
        scorer = CrossEncoderScorer(
            path,
            device=args.device,
            max_length=max_length,
            batch_size=args.batch_size,
            template=template,
        )
        label = label or os.path.basename(os.path.normpath(path)) or path
        while label in models:
            label += "'"
        models[label] = scorer
    comparison = evaluate_models(
        models,
        args.data,
        args.split,
        top_k=args.top_k,
        max_queries=args.max_queries,
        ks=ks,
        candidates=args.candidates,
        template=template,
        relevance_threshold=args.relevance_threshold,
    )
    print(comparison.to_markdown())
    if args.out:
        paths = comparison.save(args.out, chart=not args.no_chart)
        print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


# Subcommands, in the order `bge-rerank --help` lists them.
_COMMANDS = [_add_score, _add_evaluate, _add_serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bge-rerank", description="Cross-encoder reranking: score, evaluate, fine-tune, serve."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bge-rerank``."""
    args = build_parser().parse_args(argv)
    # The CLI is an application, so it (unlike the library) may configure logging.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
