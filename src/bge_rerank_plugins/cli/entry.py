"""The ``bge-rerank`` entry point: the parser of every subcommand, and :func:`main`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from . import evaluate, fit, info, score, serve
from .errors import run_handler
from .options import add_debug_flag

__all__ = ["build_parser", "main"]

# Subcommand modules, in the order `bge-rerank --help` lists them; each has add_parser(sub).
COMMANDS = (score, evaluate, fit, info, serve)


def build_parser() -> argparse.ArgumentParser:
    """The ``bge-rerank`` parser: global ``-v`` / ``--debug`` and one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="bge-rerank",
        description="Cross-encoder reranking: score, evaluate, fit, info, serve.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at INFO level; show tracebacks"
    )
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


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
    return run_handler(args)
