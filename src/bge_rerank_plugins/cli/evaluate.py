"""``bge-rerank evaluate``: rerank a BEIR-style split with one or more models and report metrics.

Hit@K, MRR@K, nDCG@K and Recall@K of each ``--model`` next to the first-stage order, printed as
a markdown table; ``--out`` also writes ``table.md``, ``metrics.json`` and ``chart.png``. The
cheap checks (``--out``, ``--data``, ``--split``) run before any model is loaded.
"""

from __future__ import annotations

import argparse
import os

from .errors import CliError
from .options import (
    SCORER_CONFIG_EXCLUDED,
    add_candidate_arguments,
    add_debug_flag,
    add_scorer_arguments,
    ks_arg,
    positive_int,
    scorer_config_from_args,
)

__all__ = ["add_parser", "check_out_dir", "model_arg", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` and its options on the ``bge-rerank`` subparsers ``sub``."""
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
    add_candidate_arguments(parser)
    parser.add_argument(
        "--ks", type=ks_arg, default=(1, 3, 5, 10), help="metric cut-offs, comma-separated"
    )
    parser.add_argument(
        "--relevance-threshold", type=float, default=1, help="lowest grade counted as relevant"
    )
    # --model is evaluate's own (repeatable, LABEL=MODEL); the rest are the common options.
    add_scorer_arguments(parser, exclude=(*SCORER_CONFIG_EXCLUDED["evaluate"], "model"))
    parser.add_argument(
        "--fusion",
        choices=["none", "auto", "blend", "rrf"],
        default="none",
        help="also report each model fused with the first stage, the weight fitted by K-fold "
        "cross-validation over queries (held-out figures); auto: the better method per fold",
    )
    parser.add_argument(
        "--fusion-weight",
        type=float,
        default=None,
        help="a fixed fusion weight in [0, 1] (the reranker's share) instead of fitting one",
    )
    parser.add_argument("--folds", type=positive_int, default=5, help="K of the fusion's CV")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and the tests")
    parser.add_argument("--out", default=None, help="folder for table.md, metrics.json, chart.png")
    parser.add_argument("--no-chart", action="store_true", help="skip chart.png")
    add_debug_flag(parser, argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def model_arg(value: str) -> tuple[str | None, str]:
    """Split a ``--model`` value ``LABEL=MODEL`` into (label, model); (None, value) if unlabelled.

    A value whose part before ``=`` holds a path separator is a path, not a label.

    >>> model_arg("tuned=./out/model")
    ('tuned', './out/model')
    >>> model_arg("BAAI/bge-reranker-base")
    (None, 'BAAI/bge-reranker-base')
    """
    label, sep, path = value.partition("=")
    if sep and label and "/" not in label and os.sep not in label and path:
        return label, path
    return None, value


def check_out_dir(out: str | None) -> None:
    """Refuse an ``--out`` that cannot become a folder before any model is loaded.

    Raises:
        CliError: ``out`` is a file, lies under a file, or under a folder that is not writable.
    """
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


def _fusion_option(args: argparse.Namespace) -> object:
    """``--fusion`` / ``--fusion-weight`` as ``evaluate_models``' ``fusion=``."""
    from ..fusion import FusionConfig

    if args.fusion_weight is None:
        return None if args.fusion == "none" else args.fusion
    if args.fusion == "auto":
        raise CliError("--fusion-weight needs --fusion blend or --fusion rrf (the method to use)")
    method = "blend" if args.fusion == "none" else args.fusion
    try:
        return FusionConfig(method=method, weight=args.fusion_weight)
    except ValueError as error:
        raise CliError(f"--fusion-weight {args.fusion_weight}: {error}") from error


def run(args: argparse.Namespace) -> int:
    """Check the paths, load the data and each model, evaluate them and print the table."""
    from ..beir import load_beir
    from ..evaluation import evaluate_models
    from ..scorer import CrossEncoderScorer

    check_out_dir(args.out)
    _fusion_option(args)  # a bad --fusion-weight fails before any model is loaded
    template = args.template  # already a newline-decoded, checked format string (or None)
    # The data first: a wrong --data or --split fails before any model is loaded.
    try:
        dataset = load_beir(args.data, args.split)
    except FileNotFoundError as error:
        raise CliError(f"--data {args.data} --split {args.split}: {error}") from error
    models: dict[str, CrossEncoderScorer] = {}
    for value in args.model:
        label, path = model_arg(value)
        scorer = CrossEncoderScorer.from_config(scorer_config_from_args(args, model=path))
        label = label or os.path.basename(os.path.normpath(path)) or path
        while label in models:
            label += "'"
        models[label] = scorer
    fusion = _fusion_option(args)
    comparison = evaluate_models(
        models,
        dataset,
        args.split,
        top_k=args.top_k,
        max_queries=args.max_queries,
        ks=args.ks,
        candidates=args.candidates,
        template=template,
        relevance_threshold=args.relevance_threshold,
        fusion=fusion,
        folds=args.folds,
        seed=args.seed,
    )
    print(comparison.to_markdown())
    if args.out:
        paths = comparison.save(args.out, chart=not args.no_chart)
        print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0
