"""The ``bge-rerank`` command line: subcommands that compose the library; no logic of their own.

    bge-rerank score --model DIR --query "..." passage1 passage2 ...
    bge-rerank evaluate --data DIR --split test --model base=BAAI/bge-reranker-base --out results
    bge-rerank fit --model DIR --data DIR --split dev   # fusion weight + calibration file
    bge-rerank info DIR                                 # architecture and calibration
    bge-rerank serve --model DIR --port 8080

Import these names from ``bge_rerank_plugins.cli`` (the console script is
``bge_rerank_plugins.cli:main``); the modules below it are where they are defined, one job each:
:mod:`.options` (argument types and the :class:`~bge_rerank_plugins.config.ScorerConfig` option
table: :func:`add_scorer_arguments`, :func:`scorer_config_from_args`), :mod:`.errors` (one-line
error reports, ``--debug`` / ``-v``), one module per subcommand (:mod:`.score`,
:mod:`.evaluate`, :mod:`.fit`, :mod:`.info`, :mod:`.serve`, each with ``add_parser`` and
``run``) and :mod:`.entry` (:func:`build_parser`, :func:`main`).
"""

from __future__ import annotations

from .entry import build_parser, main
from .errors import CliError
from .options import (
    SCORER_CONFIG_EXCLUDED,
    add_scorer_arguments,
    ks_arg,
    max_length_arg,
    non_negative_int,
    port_arg,
    positive_int,
    scorer_config_from_args,
    template_arg,
)

__all__ = [
    "SCORER_CONFIG_EXCLUDED",
    "CliError",
    "add_scorer_arguments",
    "build_parser",
    "ks_arg",
    "main",
    "max_length_arg",
    "non_negative_int",
    "port_arg",
    "positive_int",
    "scorer_config_from_args",
    "template_arg",
]
