"""Exceptions raised by bge-rerank-plugins.

Every error names the argument that was wrong and says how to fix it.
"""

from __future__ import annotations

__all__ = [
    "DeviceUnavailableError",
    "ModelFilesError",
    "ModelNotFoundError",
    "NonFiniteScoreError",
    "RandomHeadError",
    "RerankerError",
]


class RerankerError(Exception):
    """Base class for the library's own errors."""


class ModelNotFoundError(RerankerError, OSError):
    """The ``model`` argument names no local directory and the Hub could not provide it.

    Subclasses :class:`OSError` so code that already catches Hugging Face's loading errors
    keeps working.
    """


class NonFiniteScoreError(RerankerError, ValueError):
    """The model produced a NaN or infinite score.

    Raised instead of returning the value: a NaN sorts arbitrarily and serialises as ``null``,
    so it would silently corrupt a ranking. It usually means broken weights (a training run that
    diverged, a bad conversion) or half precision overflowing; ``dtype="float32"`` tells which.
    """


class ModelFilesError(RerankerError, OSError):
    """A local model folder is missing a file the model needs, or holds one that cannot be read.

    Examples: an empty folder, a folder without ``config.json`` or without tokenizer files, a
    truncated or corrupt weights file. The message names the folder and what to do. Subclasses
    :class:`OSError`, as Hugging Face's own loading errors are.
    """


class DeviceUnavailableError(RerankerError, ValueError):
    """The ``device`` argument names a real device kind that this machine does not have.

    For example ``device="cuda"`` where no CUDA GPU is visible (a CPU-only torch build, or
    ``CUDA_VISIBLE_DEVICES`` hiding them), or ``"cuda:1"`` with a single GPU.
    """


class RandomHeadError(RerankerError):
    """Loading the model would leave some of its weights newly initialised at random.

    ``transformers`` loads a base encoder, a bi-encoder or a sentence-transformers modular model
    (``modules.json``) as a sequence classifier with only a warning, and a fresh random
    ``classifier`` head: every score would be noise. The message names the missing weights and
    says what the folder looks like and what to do.
    """
