"""The ``bge-rerank`` command line: subcommands that compose the library; no logic of their own.

Each subcommand is registered by an ``_add_<name>`` function below.

    bge-rerank score --model DIR --query "..." passage1 passage2 ...
"""

from __future__ import annotations

import argparse
import json
import logging
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
    parser.set_defaults(handler=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    from .scorer import CrossEncoderScorer

    max_length = args.max_length
    if max_length is not None and max_length != "auto":
        max_length = int(max_length)
    scorer = CrossEncoderScorer(
        args.model, device=args.device, max_length=max_length, normalize=not args.raw
    )
    for ranked in scorer.rank(args.query, args.passages, top_k=args.top_k):
        print(
            json.dumps(
                {"index": ranked.index, "score": ranked.score, "text": ranked.passage},
                ensure_ascii=False,
            )
        )
    return 0


# Subcommands, in the order `bge-rerank --help` lists them.
_COMMANDS = [_add_score]


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
