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
import traceback
from collections.abc import Sequence

__all__ = ["main", "max_length_arg", "port_arg", "positive_int"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- argument types
# argparse turns the ArgumentTypeError raised here into "bge-rerank <cmd>: error: argument
# --top-k: ..." and exit status 2, naming the option.
def positive_int(value: str) -> int:
    """An int >= 1 (``--top-k``, ``--threads``, ``--max-documents``, ``--batch-size``...)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive whole number, got {value!r}"
        ) from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def port_arg(value: str) -> int:
    """A TCP port number, 1 to 65535."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a port number (1-65535), got {value!r}"
        ) from None
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {number}")
    return number


def max_length_arg(value: str) -> int | str:
    """``--max-length``: an int >= 8 (tokens per pair) or ``auto``."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of tokens (at least 8) or 'auto', got {value!r}"
        ) from None
    if number < 8:
        raise argparse.ArgumentTypeError(f"must be at least 8 tokens (or 'auto'), got {number}")
    return number


def _ks_arg(value: str) -> tuple[int, ...]:
    """``--ks``: comma-separated positive cut-offs such as ``1,3,10``."""
    try:
        ks = tuple(positive_int(k.strip()) for k in value.split(",") if k.strip())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive whole numbers such as 1,3,10; got {value!r}"
        ) from None
    if not ks:
        raise argparse.ArgumentTypeError("expected at least one cut-off, such as 1,3,10")
    return ks


def _debug_flag(parser: argparse.ArgumentParser, default: object = False) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="on an error, show the full Python traceback",
    )


def _add_score(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("score", help="score and rank passages against one query")
    parser.add_argument("--model", default="BAAI/bge-reranker-v2-m3", help="Hub id or directory")
    parser.add_argument("--query", required=True)
    parser.add_argument("passages", nargs="+", help="passages to rank")
    parser.add_argument("--top-k", type=positive_int, default=None)
    parser.add_argument("--raw", action="store_true", help="print raw logits, not sigmoid scores")
    parser.add_argument(
        "--max-length", type=max_length_arg, default=None, help="an int >= 8 or 'auto'"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best)")
    _add_backend(parser)
    _debug_flag(parser, argparse.SUPPRESS)
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

    scorer = CrossEncoderScorer(
        args.model,
        device=args.device,
        max_length=args.max_length,
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
    parser.add_argument("--port", type=port_arg, default=8080)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto")
    _add_backend(parser)
    parser.add_argument(
        "--max-length", type=max_length_arg, default=None, help="an int >= 8 or 'auto'"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="most pairs per pass (default 8 CPU, 32 GPU)",
    )
    parser.add_argument(
        "--max-batch-pairs",
        type=positive_int,
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
    parser.add_argument("--max-documents", type=positive_int, default=1000, help="per request")
    parser.add_argument(
        "--max-text-chars", type=positive_int, default=20_000, help="per query/document"
    )
    parser.add_argument(
        "--max-request-bytes",
        type=positive_int,
        default=32 * 1024 * 1024,
        help="largest request body, chunked bodies included (default 32 MiB)",
    )
    parser.add_argument(
        "--request-header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection may take to send its request headers (0: no bound)",
    )
    parser.add_argument(
        "--request-body-timeout",
        type=float,
        default=30.0,
        help="seconds a request body may take to arrive after its headers (0: no bound)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /rerank, /v1/rerank, /v2/rerank and "
        "/info (default: $BGE_RERANK_API_KEY, if set; an empty key is an error)",
    )
    parser.add_argument("--served-model-name", default=None, help="name reported by /info")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: one per core)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    _debug_flag(parser, argparse.SUPPRESS)
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
    # Every option is checked here, before the server starts: a bad value is one line and
    # exit status 1, never a server answering 503.
    config = ServerConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        max_length=args.max_length,
        batch_size=args.batch_size,
        max_batch_pairs=args.max_batch_pairs,
        max_batch_wait_ms=args.max_batch_wait_ms,
        batch_wait_fraction=args.batch_wait_fraction or None,
        batching=not args.no_batching,
        max_documents=args.max_documents,
        max_text_chars=args.max_text_chars,
        max_request_bytes=args.max_request_bytes,
        api_key=args.api_key,
        served_model_name=args.served_model_name,
        torch_threads=args.threads,
        request_header_timeout_s=args.request_header_timeout or None,
        request_body_timeout_s=args.request_body_timeout or None,
    )
    if args.log_level.lower() in ("info", "debug", "trace"):
        # A server's start-up lines (auth on or off, model loaded) belong on its log.
        logging.getLogger("bge_rerank_plugins").setLevel(
            logging.DEBUG if args.log_level.lower() != "info" else logging.INFO
        )
    # A model that fails to load stops the server: run_server raises ModelLoadError, which
    # main() prints as one line with exit status 1.
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
    parser.add_argument(
        "--top-k", type=positive_int, default=30, help="candidates reranked per query"
    )
    parser.add_argument("--max-queries", type=positive_int, default=None)
    parser.add_argument(
        "--candidates",
        choices=["auto", "given", "bm25"],
        default="auto",
        help="given candidates file, BM25 over the corpus, or auto (given when present)",
    )
    parser.add_argument(
        "--ks", type=_ks_arg, default=(1, 3, 5, 10), help="metric cut-offs, comma-separated"
    )
    parser.add_argument(
        "--relevance-threshold", type=float, default=1, help="lowest grade counted as relevant"
    )
    parser.add_argument(
        "--template", default=None, help="document fields, e.g. '{title}\\n{text}' (default)"
    )
    parser.add_argument(
        "--max-length", type=max_length_arg, default=None, help="an int >= 8 or 'auto'"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, help="default 8 CPU, 32 GPU"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="folder for table.md, metrics.json, chart.png")
    parser.add_argument("--no-chart", action="store_true", help="skip chart.png")
    _debug_flag(parser, argparse.SUPPRESS)
    parser.set_defaults(handler=_run_evaluate)


def _model_arg(value: str) -> tuple[str | None, str]:
    label, sep, path = value.partition("=")
    if sep and label and "/" not in label and os.sep not in label and path:
        return label, path
    return None, value


def _check_out_dir(out: str | None) -> None:
    """Refuse an ``--out`` that cannot become a folder before any model is loaded."""
    if out is None:
        return
    path = os.path.abspath(os.path.expanduser(out))
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"--out {out}: is a file, not a folder; pass a folder path (it is created).")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CliError(f"--out {out}: {parent} is a file, so the folder cannot be created there.")
    if not os.access(parent, os.W_OK):
        raise CliError(f"--out {out}: {parent} is not writable; pass a folder you can write to.")


def _run_evaluate(args: argparse.Namespace) -> int:
    from .beir import load_beir
    from .evaluation import evaluate_models
    from .scorer import CrossEncoderScorer

    _check_out_dir(args.out)
    max_length = args.max_length
    template = args.template.replace("\\n", "\n") if args.template else None
    ks = args.ks
    # The data first: a wrong --data or --split fails before any model is loaded.
    try:
        dataset = load_beir(args.data, args.split)
    except FileNotFoundError as error:
        raise CliError(f"--data {args.data} --split {args.split}: {error}") from error
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
        dataset,
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


class CliError(Exception):
    """A problem with the command line found by a subcommand; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bge-rerank", description="Cross-encoder reranking: score, evaluate, fine-tune, serve."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at INFO level; show tracebacks"
    )
    _debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def _errors_to_report() -> tuple[type[BaseException], ...]:
    """What the CLI reports as one line: the library's errors and bad values or paths."""
    from .errors import RerankerError

    return (CliError, RerankerError, ValueError, TypeError, OSError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bge-rerank``.

    A bad option is reported by argparse (exit status 2). An error while running (a model that
    cannot be found or loaded, a bad data folder, a device this machine lacks) is printed as one
    line, ``bge-rerank: error: ...``, with exit status 1; ``--debug`` shows the traceback
    instead, ``-v`` shows it as well.
    """
    args = build_parser().parse_args(argv)
    # The CLI is an application, so it (unlike the library) may configure logging.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("bge-rerank: interrupted", file=sys.stderr)
        return 130
    except _errors_to_report() as error:
        if args.debug:
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"bge-rerank: error: {_one_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
