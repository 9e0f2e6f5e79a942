"""``bge-rerank score``: score and rank passages given on the command line against one query.

Prints one JSON object per passage, best first: ``{"index", "score", "text"}``.
"""

from __future__ import annotations

import argparse
import json

from .options import (
    SCORER_CONFIG_EXCLUDED,
    add_debug_flag,
    add_scorer_arguments,
    positive_int,
    scorer_config_from_args,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``score`` and its options on the ``bge-rerank`` subparsers ``sub``."""
    parser = sub.add_parser("score", help="score and rank passages against one query")
    parser.add_argument("--query", required=True)
    parser.add_argument("passages", nargs="+", help="passages to rank")
    parser.add_argument("--top-k", type=positive_int, default=None)
    add_scorer_arguments(parser, exclude=SCORER_CONFIG_EXCLUDED["score"])
    parser.add_argument(
        "--calibrated",
        dest="normalize",
        action="store_const",
        const="calibrated",
        help="probabilities of relevance from the model folder's reranker_calibration.json "
        "(see bge-rerank fit)",
    )
    add_debug_flag(parser, argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the scorer the options describe, rank ``args.passages`` and print them."""
    from ..scorer import CrossEncoderScorer

    scorer = CrossEncoderScorer.from_config(scorer_config_from_args(args))
    for ranked in scorer.rank(args.query, args.passages, top_k=args.top_k):
        print(
            json.dumps(
                {"index": ranked.index, "score": ranked.score, "text": ranked.passage},
                ensure_ascii=False,
            )
        )
    return 0
