"""How ``bge-rerank`` reports a failure: one line on stderr and exit status 1.

A bad option never gets here: argparse reports it (naming the option) with exit status 2. An
error while a subcommand runs (a model that cannot be found or loaded, a bad data folder, a
device this machine lacks) is printed by :func:`run_handler` as ``bge-rerank: error: ...``;
``--debug`` re-raises it (the full traceback), ``-v`` prints the traceback before the line.
"""

from __future__ import annotations

import argparse
import sys
import traceback

__all__ = ["CliError", "errors_to_report", "one_line", "run_handler"]


class CliError(Exception):
    """A problem with the command line found by a subcommand; printed as one line."""


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (its lines joined), or its type's name if it has none."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def errors_to_report() -> tuple[type[BaseException], ...]:
    """What the CLI reports as one line: the library's errors and bad values or paths."""
    from ..errors import RerankerError

    return (CliError, RerankerError, ValueError, TypeError, OSError, ImportError)


def run_handler(args: argparse.Namespace) -> int:
    """Run the parsed subcommand (``args.handler``) and turn its failure into an exit status.

    Returns:
        The handler's status (0 when it returns None); 1 after printing an error of
        :func:`errors_to_report` as one line (unless ``args.debug``: then it propagates); 130 on
        Ctrl-C.
    """
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("bge-rerank: interrupted", file=sys.stderr)
        return 130
    except errors_to_report() as error:
        if args.debug:
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"bge-rerank: error: {one_line(error)}", file=sys.stderr)
        return 1
