"""``bge-rerank fit``: learn a model's fusion weight and score calibration on a labelled split.

Scores the split's first-stage candidates once, fits the fusion with the first stage (nDCG@k,
K-fold cross-validation over queries) and the calibration of the raw logits into probabilities
(Platt, beta, isotonic with enough data; ``--calibration-method auto`` keeps the one with the
lowest held-out log loss over queries), prints the held-out figures and writes
``reranker_calibration.json`` into the model folder (``--out`` elsewhere; ``--dry-run``:
nowhere). ``--reliability`` also draws the reliability diagram.

    bge-rerank fit --model ./my-reranker --data data/scifact --split dev --top-k 30
"""

from __future__ import annotations

import argparse
import os

from .errors import CliError
from .evaluate import check_out_dir
from .options import (
    SCORER_CONFIG_EXCLUDED,
    add_candidate_arguments,
    add_debug_flag,
    add_scorer_arguments,
    positive_int,
    scorer_config_from_args,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fit`` and its options on the ``bge-rerank`` subparsers ``sub``."""
    parser = sub.add_parser(
        "fit",
        help="fit the fusion weight and score calibration of a model on a labelled split",
        description="Fit, on a BEIR-style split, the weight of the fusion with the first stage "
        "(max nDCG@k, K-fold cross-validation over queries) and the calibration of the model's "
        "scores into probabilities of relevance; write reranker_calibration.json into the "
        "model folder.",
    )
    parser.add_argument("--data", required=True, help="BEIR-style folder (corpus, queries, qrels)")
    parser.add_argument("--split", default="dev", help="qrels split (default: dev)")
    add_candidate_arguments(parser)
    parser.add_argument(
        "--method",
        choices=["auto", "blend", "rrf"],
        default="auto",
        help="fusion method; auto: the better of the two on the training folds",
    )
    parser.add_argument(
        "--calibration-method",
        choices=["auto", "platt", "beta", "isotonic"],
        default="auto",
        help="calibration stored for normalize='calibrated'; auto: the lowest cross-validated "
        "log loss over queries (isotonic only with >= 1000 pairs, 50 of each label)",
    )
    parser.add_argument("--folds", type=positive_int, default=5, help="K of the K-fold CV")
    parser.add_argument("--k", type=positive_int, default=10, help="nDCG cut-off to maximise")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds")
    parser.add_argument(
        "--relevance-threshold", type=float, default=1, help="lowest grade counted as relevant"
    )
    add_scorer_arguments(parser, exclude=SCORER_CONFIG_EXCLUDED["fit"])
    parser.add_argument(
        "--out", default=None, help="folder for reranker_calibration.json (default: --model)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the figures only")
    parser.add_argument("--reliability", default=None, help="PNG path for the reliability diagram")
    add_debug_flag(parser, argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Check the paths, load the data and the model, fit, print and save."""
    from ..beir import load_beir
    from ..evaluation import fit_fusion
    from ..scorer import CrossEncoderScorer

    if args.folds < 2:
        raise CliError(f"--folds {args.folds}: cross-validation needs at least 2 folds")
    out = args.out
    if out is None and not args.dry_run:
        if not os.path.isdir(args.model):
            raise CliError(
                f"--model {args.model} is not a local folder, so the calibration cannot be "
                "written next to it; pass --out <folder> (or --dry-run)"
            )
        out = args.model
    check_out_dir(out)
    try:
        dataset = load_beir(args.data, args.split)
    except FileNotFoundError as error:
        raise CliError(f"--data {args.data} --split {args.split}: {error}") from error
    scorer = CrossEncoderScorer.from_config(scorer_config_from_args(args))
    result = fit_fusion(
        scorer,
        dataset,
        args.split,
        top_k=args.top_k,
        max_queries=args.max_queries,
        candidates=args.candidates,
        template=args.template,
        relevance_threshold=args.relevance_threshold,
        method=args.method,
        folds=args.folds,
        k=args.k,
        seed=args.seed,
        calibration_method=args.calibration_method,
    )
    print(result.summary())
    if args.reliability:
        print(f"wrote {result.report.plot(args.reliability)}")
    if not args.dry_run:
        print(f"wrote {result.save(out)}")
    return 0
