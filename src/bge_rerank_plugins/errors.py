"""Exceptions raised by bge-rerank-plugins.

Every error names the argument that was wrong and says how to fix it.
"""

from __future__ import annotations

__all__ = ["ModelNotFoundError", "RerankerError"]


class RerankerError(Exception):
    """Base class for the library's own errors."""


class ModelNotFoundError(RerankerError, OSError):
    """The ``model`` argument names no local directory and the Hub could not provide it.

    Subclasses :class:`OSError` so code that already catches Hugging Face's loading errors
    keeps working.
    """
