"""What a backend is: a :class:`Runner` for one padded batch, and its :class:`BackendSpec`.

The scorer tokenizes, sorts and batches pairs itself, and reads the score from the logits
(:mod:`bge_rerank_plugins.runtime.families`); a backend only turns one padded batch of tensors
into logits. Everything else the package says about a backend (exact or not, CPU only, which
extra it needs, a one-line description) is a field of its :class:`BackendSpec` in
:data:`bge_rerank_plugins.runtime.backends.REGISTRY`, so docstrings, the adapters' field
description and the CLI help read it from there instead of repeating it.

A fifth backend is one entry in that registry: a ``BackendSpec`` whose ``build`` returns a
runner for a :class:`~bge_rerank_plugins.runtime.loading.LoadedModel`. Runners that are
expensive to build (an export, a quantized copy) keep themselves in
:attr:`LoadedModel.runners <bge_rerank_plugins.runtime.loading.LoadedModel.runners>`, so every
scorer on that model shares one.

>>> from bge_rerank_plugins.runtime.backends import get
>>> spec = get("torch-int8")
>>> spec.exact, spec.cpu_only, spec.needs_torch_weights, spec.extra
(False, True, False, None)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from ..loading import LoadedModel

__all__ = ["BackendSpec", "Runner"]


class Runner(Protocol):
    """Runs one padded batch and returns its logits, shaped ``(batch, num_labels)``.

    ``tensors`` holds ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` for models
    that use them), padded to the batch's longest pair, on the scorer's device. Any callable of
    this shape is a runner: it is also what ``CrossEncoderScorer(..., runner=...)`` takes.
    """

    def __call__(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor: ...


@dataclass(frozen=True)
class BackendSpec:
    """One backend: its name, its properties and how to build its runner.

    Attributes:
        name: the value of the scorer's ``backend`` option.
        exact: whether scores match the float32 torch model (to about 1e-5); int8 shifts them.
        needs_torch_weights: whether the runner uses the loaded ``transformers`` network; the
            others build a copy of their own, so the scorer leaves the torch weights on disk.
        cpu_only: whether it always runs on the CPU (a scorer on a GPU logs a notice).
        extra: the ``pip install 'bge-rerank-plugins[extra]'`` it needs, or ``None``.
        description: one line for help texts: what it runs and what it is good for.
        build: ``build(loaded) -> Runner`` for a loaded model.
    """

    name: str
    exact: bool
    needs_torch_weights: bool
    cpu_only: bool
    extra: str | None
    description: str
    build: Callable[[LoadedModel], Runner]

    def summary(self) -> str:
        """One help-text line: the name, its properties in brackets, the description.

        >>> from bge_rerank_plugins.runtime.backends import get
        >>> print(get("onnx").summary())  # doctest: +ELLIPSIS
        onnx (exact, needs the onnx extra): the model exported once to ONNX, run by ...
        """
        notes = ["exact" if self.exact else "approximate"]
        if self.cpu_only:
            notes.append("CPU only")
        if self.extra:
            notes.append(f"needs the {self.extra} extra")
        return f"{self.name} ({', '.join(notes)}): {self.description}"
