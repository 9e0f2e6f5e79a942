"""``bge-rerank info``: what a model folder holds for this library, without loading the weights.

Prints the model's architecture (from ``config.json``) and its calibration file
(``reranker_calibration.json``: the method, the fusion setting and the held-out figures it was
fitted with), or says that it has none and how to fit one. ``--json`` prints it as one object.

    bge-rerank info ./my-reranker
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import CliError
from .options import add_debug_flag

__all__ = ["add_parser", "describe_model", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``info`` on the ``bge-rerank`` subparsers ``sub``."""
    parser = sub.add_parser(
        "info",
        help="show a model folder's architecture and calibration (no weights are loaded)",
    )
    parser.add_argument("model", help="a local model folder (or a Hub id in the local cache)")
    parser.add_argument("--revision", default=None, help="Hub revision (for a cached Hub id)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_debug_flag(parser, argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def describe_model(model: str, revision: str | None = None) -> dict[str, Any]:
    """The facts ``info`` prints: the folder, its architectures and its calibration (or None)."""
    from ..calibration import CALIBRATION_FILE, find_calibration

    folder = Path(model)
    out: dict[str, Any] = {"model": model, "local_folder": folder.is_dir()}
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        out["architectures"] = data.get("architectures")
        out["model_type"] = data.get("model_type")
    calibration = find_calibration(model, revision)
    out["calibration_file"] = CALIBRATION_FILE
    out["calibration"] = None if calibration is None else calibration.to_dict()
    return out


def _text(facts: dict[str, Any]) -> str:
    lines = [f"model: {facts['model']}"]
    if facts.get("architectures"):
        lines.append(f"architectures: {', '.join(facts['architectures'])}")
    cal = facts["calibration"]
    if cal is None:
        lines.append(
            f"calibration: none ({facts['calibration_file']} not found); fit one with "
            "`bge-rerank fit --model <folder> --data <beir folder>` to use "
            "normalize='calibrated'"
        )
        return "\n".join(lines)
    platt, beta = cal["platt"], cal.get("beta")
    lines.append(
        f"calibration: {cal['method']} (schema {cal['schema_version']}); Platt a={platt['a']:.4g}"
        f" b={platt['b']:.4g}; beta: "
        + ("none" if beta is None else f"a={beta['a']:.4g} b={beta['b']:.4g} c={beta['c']:.4g}")
        + "; isotonic: "
        + ("none" if cal["isotonic"] is None else f"{len(cal['isotonic']['x'])} points")
    )
    info = cal.get("info") or {}
    if info:
        where = ", ".join(
            f"{k}={info[k]}" for k in ("dataset", "split", "top_k", "queries") if k in info
        )
        lines.append(f"  fitted on {where} ({info.get('created', 'date unknown')})")
        ece = (info.get("calibration_fit") or {}).get("ece_heldout")
        if ece:
            lines.append("  held-out ECE: " + ", ".join(f"{k} {v}" for k, v in ece.items()))
        loss = (info.get("calibration_fit") or {}).get("log_loss_heldout")
        if loss:
            lines.append("  held-out log loss: " + ", ".join(f"{k} {v}" for k, v in loss.items()))
    fusion = cal.get("fusion")
    if fusion:
        fit = info.get("fusion_fit") or {}
        lines.append(
            f"fusion: {fusion['method']} weight={fusion['weight']} rrf_k={fusion['rrf_k']} "
            f"normalization={fusion['normalization']}"
        )
        if fit:
            lines.append(
                f"  held-out {fit['metric']} {fit['heldout']} (first stage {fit['first_stage']},"
                f" reranker alone {fit['reranker']}; {fit['folds']}-fold CV)"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print what :func:`describe_model` finds."""
    try:
        facts = describe_model(args.model, args.revision)
    except (ValueError, OSError) as error:
        raise CliError(f"{args.model}: {error}") from error
    print(json.dumps(facts, indent=1) if args.json else _text(facts))
    return 0
