"""The ``bge-rerank`` command line: subcommands that compose the library; no logic of their own.

Each subcommand is registered by an ``_add_<name>`` function below. The options that say how a
model is loaded and run (``--model``, ``--device``, ``--dtype``, ``--max-length``,
``--backend``...) are the fields of :class:`~bge_rerank_plugins.config.ScorerConfig`, added by
:func:`add_scorer_arguments` from one table and read back by :func:`scorer_config_from_args`, so
they are spelled, typed and documented the same in every subcommand.

    bge-rerank score --model DIR --query "..." passage1 passage2 ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Collection, Sequence
from dataclasses import fields
from typing import Any

from .config import DEFAULT_MODEL, SCORER_CONFIG_FIELDS, ScorerConfig

__all__ = [
    "SCORER_CONFIG_EXCLUDED",
    "add_scorer_arguments",
    "main",
    "max_length_arg",
    "non_negative_int",
    "port_arg",
    "positive_int",
    "scorer_config_from_args",
]

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


def non_negative_int(value: str) -> int:
    """An int >= 0 (``--cache-size``)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {number}")
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


def _template_arg(value: str) -> str:
    """``--template``: a format string over record fields; a typed ``\\n`` is a newline."""
    from .fields import PassageTemplate

    template = value.replace("\\n", "\n")
    try:
        PassageTemplate(template)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return template


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


# ---------------------------------------------------------------- scorer options
#: ScorerConfig fields a subcommand does not offer as options, each for a reason (checked by
#: tests/test_config.py, which fails when a new ScorerConfig field is in neither list).
SCORER_CONFIG_EXCLUDED: dict[str, tuple[str, ...]] = {
    # Passages on the command line are plain text: no records to render. One call per
    # process: a cache would never be hit.
    "score": ("template", "cache_size"),
    # Metrics depend on the order only, which the sigmoid keeps. Each pair is scored once per
    # model: a cache would only cost memory.
    "evaluate": ("normalize", "cache_size"),
}


def _scorer_arguments() -> dict[str, tuple[str, dict[str, Any]]]:
    """ScorerConfig field -> (option, ``add_argument`` keywords); ``dest`` is the field name."""
    from .backends import BACKENDS
    from .loading import DTYPES

    return {
        "model": ("--model", {"help": f"Hub id or directory (default {DEFAULT_MODEL})"}),
        "device": ("--device", {"help": "cpu, cuda, cuda:N or mps (default: the best available)"}),
        "dtype": (
            "--dtype",
            {
                "choices": DTYPES,
                "help": "precision; auto is float16 on CUDA and float32 elsewhere",
            },
        ),
        "max_length": (
            "--max-length",
            {
                "type": max_length_arg,
                "help": "most tokens per pair: an int >= 8 or 'auto' (default: the model's "
                "limit, at most 512)",
            },
        ),
        "query_max_length": (
            "--query-max-length",
            {
                "type": positive_int,
                "help": "most tokens kept of the query (default: half of --max-length)",
            },
        ),
        "batch_size": (
            "--batch-size",
            {"type": positive_int, "help": "most pairs per pass (default 8 CPU, 32 GPU)"},
        ),
        "token_budget": (
            "--token-budget",
            {
                "type": positive_int,
                "help": "most padded tokens per pass (default: batch size x longest pair)",
            },
        ),
        "normalize": (
            "--raw",
            {"action": "store_false", "help": "raw logits instead of sigmoid scores in [0, 1]"},
        ),
        "template": (
            "--template",
            {
                "type": _template_arg,
                "help": "record fields scored as the passage, e.g. '{title}\\n{text}' (the "
                "default)",
            },
        ),
        "cache_size": (
            "--cache-size",
            {"type": non_negative_int, "help": "raw scores kept in an LRU cache (default 0: none)"},
        ),
        "backend": (
            "--backend",
            {
                "choices": BACKENDS,
                "help": "torch (exact), onnx (exact, needs the onnx extra), torch-int8 or "
                "onnx-int8 (approximate int8 scores, faster on CPU; see docs/benchmarks.md)",
            },
        ),
        "revision": ("--revision", {"help": "Hub revision of the model (branch, tag or commit)"}),
        "trust_remote_code": (
            "--trust-remote-code",
            {"action": "store_true", "help": "run custom model code from the model repository"},
        ),
    }


def add_scorer_arguments(
    parser: argparse.ArgumentParser, *, exclude: Collection[str] = ()
) -> tuple[str, ...]:
    """Add an option for each :class:`~bge_rerank_plugins.config.ScorerConfig` field.

    Each option's ``dest`` is the field name and its default is the field's default, so
    :func:`scorer_config_from_args` reads them back. ``normalize`` is spelled ``--raw``.

    Args:
        parser: the subcommand's parser.
        exclude: fields the subcommand does not offer, or offers with an option of its own
            (``evaluate``'s repeatable ``--model``).

    Returns:
        The fields that got an option, in ScorerConfig's order.

    >>> parser = argparse.ArgumentParser()
    >>> added = add_scorer_arguments(parser, exclude=("template", "cache_size"))
    >>> scorer_config_from_args(parser.parse_args(["--dtype", "bfloat16", "--raw"]))
    ... # doctest: +ELLIPSIS
    ScorerConfig(model='BAAI/bge-reranker-v2-m3', device=None, dtype='bfloat16', ...)
    """
    unknown = set(exclude) - set(SCORER_CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"exclude names no ScorerConfig field: {sorted(unknown)}")
    table = _scorer_arguments()
    defaults = {f.name: f.default for f in fields(ScorerConfig)}
    added = []
    for name in SCORER_CONFIG_FIELDS:
        if name in exclude or name not in table:
            continue
        option, keywords = table[name]
        parser.add_argument(option, dest=name, default=defaults[name], **keywords)
        added.append(name)
    return tuple(added)


def scorer_config_from_args(args: argparse.Namespace, **overrides: Any) -> ScorerConfig:
    """The :class:`~bge_rerank_plugins.config.ScorerConfig` of parsed options.

    Reads every attribute of ``args`` named like a ScorerConfig field (those
    :func:`add_scorer_arguments` added); ``overrides`` win (``model=`` for a subcommand that
    takes several models).
    """
    values = {name: getattr(args, name) for name in SCORER_CONFIG_FIELDS if hasattr(args, name)}
    values.update(overrides)
    return ScorerConfig(**values)


def _add_score(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("score", help="score and rank passages against one query")
    parser.add_argument("--query", required=True)
    parser.add_argument("passages", nargs="+", help="passages to rank")
    parser.add_argument("--top-k", type=positive_int, default=None)
    add_scorer_arguments(parser, exclude=SCORER_CONFIG_EXCLUDED["score"])
    _debug_flag(parser, argparse.SUPPRESS)
    parser.set_defaults(handler=_run_score)


def _add_backend(parser: argparse.ArgumentParser) -> None:
    option, keywords = _scorer_arguments()["backend"]
    parser.add_argument(option, dest="backend", default="torch", **keywords)


def _run_score(args: argparse.Namespace) -> int:
    from .scorer import CrossEncoderScorer

    scorer = CrossEncoderScorer.from_config(scorer_config_from_args(args))
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
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Hub id or directory")
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
    package_logger = logging.getLogger("bge_rerank_plugins")
    previous_level = package_logger.level
    if args.log_level.lower() in ("info", "debug", "trace"):
        # A server's start-up lines (auth on or off, model loaded) belong on its log.
        package_logger.setLevel(logging.INFO if args.log_level.lower() == "info" else logging.DEBUG)
    try:
        # A model that fails to load stops the server: run_server raises ModelLoadError, which
        # main() prints as one line with exit status 1.
        run_server(config, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        package_logger.setLevel(previous_level)
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
    # --model is evaluate's own (repeatable, LABEL=MODEL); the rest are the common options.
    add_scorer_arguments(parser, exclude=(*SCORER_CONFIG_EXCLUDED["evaluate"], "model"))
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
    template = args.template  # already a newline-decoded, checked format string (or None)
    ks = args.ks
    # The data first: a wrong --data or --split fails before any model is loaded.
    try:
        dataset = load_beir(args.data, args.split)
    except FileNotFoundError as error:
        raise CliError(f"--data {args.data} --split {args.split}: {error}") from error
    models: dict[str, CrossEncoderScorer] = {}
    for value in args.model:
        label, path = _model_arg(value)
        scorer = CrossEncoderScorer.from_config(scorer_config_from_args(args, model=path))
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
