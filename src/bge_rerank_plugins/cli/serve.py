"""``bge-rerank serve``: the HTTP rerank server's options, checked before it starts.

Needs the ``serve`` extra. Every option becomes a field of
:class:`~bge_rerank_plugins.server.ServerConfig`, which validates them all before
:func:`~bge_rerank_plugins.server.run_server` binds the port: a bad value is one line and exit
status 1, never a server answering 503.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import DEFAULT_MODEL
from .options import add_backend_argument, add_debug_flag, max_length_arg, port_arg, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` and its options on the ``bge-rerank`` subparsers ``sub``."""
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
    add_backend_argument(parser)
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
        "--score-timeout",
        type=float,
        default=0.0,
        help="seconds a request may wait for its scores, queue included; later -> 503 "
        "deadline_exceeded with Retry-After (default 0: no deadline)",
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
    add_debug_flag(parser, argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build the server's config from the options and run it until stopped.

    Returns 2 (with one line naming the extra) when the ``serve`` extra is not installed.
    """
    try:
        from ..server import ServerConfig, run_server
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
        score_timeout_s=args.score_timeout or None,
    )
    package_logger = logging.getLogger("bge_rerank_plugins")
    previous_level = package_logger.level
    if args.log_level.lower() in ("info", "debug", "trace"):
        # A server's start-up lines (auth on or off, model loaded) belong on its log.
        package_logger.setLevel(logging.INFO if args.log_level.lower() == "info" else logging.DEBUG)
    try:
        # A model that fails to load stops the server: run_server raises ModelLoadError, which
        # the CLI prints as one line with exit status 1.
        run_server(config, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        package_logger.setLevel(previous_level)
    return 0
