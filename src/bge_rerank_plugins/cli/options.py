"""Options shared by the subcommands: argparse value types and the scorer option table.

The options that say how a model is loaded and run (``--model``, ``--device``, ``--dtype``,
``--max-length``, ``--backend``...) are the fields of
:class:`~bge_rerank_plugins.config.ScorerConfig`, added by :func:`add_scorer_arguments` from one
table (:func:`scorer_argument_table`) and read back by :func:`scorer_config_from_args`, so they
are spelled, typed and documented the same in every subcommand.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection
from dataclasses import fields
from typing import Any

from ..config import DEFAULT_MODEL, SCORER_CONFIG_FIELDS, ScorerConfig

__all__ = [
    "SCORER_CONFIG_EXCLUDED",
    "add_backend_argument",
    "add_debug_flag",
    "add_scorer_arguments",
    "ks_arg",
    "max_length_arg",
    "non_negative_int",
    "port_arg",
    "positive_int",
    "scorer_argument_table",
    "scorer_config_from_args",
    "template_arg",
]


# ---------------------------------------------------------------- argument types
# argparse turns the ArgumentTypeError raised here into "bge-rerank <cmd>: error: argument
# --top-k: ..." and exit status 2, naming the option.
def _whole_number(value: str, expected: str) -> int:
    """``value`` as an int, or the ArgumentTypeError saying what was ``expected``."""
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}") from None


def positive_int(value: str) -> int:
    """An int >= 1 (``--top-k``, ``--threads``, ``--max-documents``, ``--batch-size``...)."""
    number = _whole_number(value, "a positive whole number")
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def non_negative_int(value: str) -> int:
    """An int >= 0 (``--cache-size``)."""
    number = _whole_number(value, "a whole number >= 0")
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {number}")
    return number


def port_arg(value: str) -> int:
    """A TCP port number, 1 to 65535."""
    number = _whole_number(value, "a port number (1-65535)")
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {number}")
    return number


def max_length_arg(value: str) -> int | str:
    """``--max-length``: an int >= 8 (tokens per pair) or ``auto``."""
    if value.strip().lower() == "auto":
        return "auto"
    number = _whole_number(value, "a number of tokens (at least 8) or 'auto'")
    if number < 8:
        raise argparse.ArgumentTypeError(f"must be at least 8 tokens (or 'auto'), got {number}")
    return number


def template_arg(value: str) -> str:
    """``--template``: a format string over record fields; a typed ``\\n`` is a newline."""
    from ..fields import PassageTemplate

    template = value.replace("\\n", "\n")
    try:
        PassageTemplate(template)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return template


def ks_arg(value: str) -> tuple[int, ...]:
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


def add_debug_flag(parser: argparse.ArgumentParser, default: object = False) -> None:
    """Add ``--debug`` (show the traceback on an error).

    Subcommands pass ``default=argparse.SUPPRESS`` so that ``bge-rerank --debug score ...`` and
    ``bge-rerank score --debug ...`` both work: the subparser only sets it when given.
    """
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
    # The fit reads raw logits whatever normalize says; each pair is scored once.
    "fit": ("normalize", "cache_size"),
}


def scorer_argument_table() -> dict[str, tuple[str, dict[str, Any]]]:
    """ScorerConfig field -> (option, ``add_argument`` keywords); ``dest`` is the field name."""
    from ..runtime.backends import BACKENDS, describe
    from ..runtime.device import DTYPES
    from ..runtime.families import family_choices

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
                "type": template_arg,
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
                "help": describe(),  # written from the registry, the one backend description
            },
        ),
        "revision": ("--revision", {"help": "Hub revision of the model (branch, tag or commit)"}),
        "trust_remote_code": (
            "--trust-remote-code",
            {"action": "store_true", "help": "run custom model code from the model repository"},
        ),
        "family": (
            "--family",
            {
                "choices": family_choices(),
                "help": "how the model is loaded and scored (default auto: from its files)",
            },
        ),
        "instruction": (
            "--instruction",
            {"help": "task text of the causal-LM families (default: the family's own)"},
        ),
        "cutoff_layer": (
            "--cutoff-layer",
            {
                "type": positive_int,
                "help": "layer a layer-wise reranker reads (bge-layerwise, bge-lightweight; "
                "default: the top layer)",
            },
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
    table = scorer_argument_table()
    defaults = {f.name: f.default for f in fields(ScorerConfig)}
    added = []
    for name in SCORER_CONFIG_FIELDS:
        if name in exclude or name not in table:
            continue
        option, keywords = table[name]
        parser.add_argument(option, dest=name, default=defaults[name], **keywords)
        added.append(name)
    return tuple(added)


def add_candidate_arguments(parser: argparse.ArgumentParser) -> None:
    """``--top-k``, ``--max-queries`` and ``--candidates``: which first-stage candidates of a BEIR
    folder are reranked (``evaluate`` and ``fit`` read them the same way)."""
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


def add_backend_argument(parser: argparse.ArgumentParser, default: str = "torch") -> None:
    """Add ``--backend`` alone, spelled and documented as in :func:`add_scorer_arguments`."""
    option, keywords = scorer_argument_table()["backend"]
    parser.add_argument(option, dest="backend", default=default, **keywords)


def scorer_config_from_args(args: argparse.Namespace, **overrides: Any) -> ScorerConfig:
    """The :class:`~bge_rerank_plugins.config.ScorerConfig` of parsed options.

    Reads every attribute of ``args`` named like a ScorerConfig field (those
    :func:`add_scorer_arguments` added); ``overrides`` win (``model=`` for a subcommand that
    takes several models).
    """
    values = {name: getattr(args, name) for name in SCORER_CONFIG_FIELDS if hasattr(args, name)}
    values.update(overrides)
    return ScorerConfig(**values)
