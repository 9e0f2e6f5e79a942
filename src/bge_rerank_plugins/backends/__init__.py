"""Inference backends for :class:`~bge_rerank_plugins.CrossEncoderScorer`.

The scorer tokenizes, sorts and batches pairs itself; a backend only runs one padded batch and
returns its logits. Pick one with ``CrossEncoderScorer(..., backend=...)``:

- ``"torch"`` (default): the ``transformers`` model as loaded, in the scorer's dtype.
- ``"onnx"``: the model exported once to ONNX and run by ONNX Runtime with all graph
  optimizations (float32; scores match ``"torch"`` to about 1e-5). Needs the ``onnx`` extra.
- ``"torch-int8"``: the encoder's ``Linear`` layers as int8 x int8 products in
  ``torch._int_mm``, with one scale per weight channel and one per token of activations. CPU
  only, no extra dependency; of the int8 backends the faster one and the one that keeps
  rankings closest (see ``docs/benchmarks.md``). On x86 CPUs without VNNI or AMX, whose int8
  kernels sum byte products in 16 bits, the weights use -64..64 so that no sum saturates.
- ``"onnx-int8"``: the ONNX export with dynamically quantized int8 weights (one activation
  scale per batch); needs the ``onnx`` extra. Quantized with ``reduce_range`` (weights
  -64..64) where ONNX Runtime's kernels would saturate full-range ones, measured per CPU.

Exported and quantized ONNX files are cached in an ``onnx/`` folder inside the model directory
(or under ``~/.cache/bge_rerank_plugins/onnx`` when that is not writable) and reused while the
weights are unchanged.

>>> from bge_rerank_plugins.backends import BACKENDS
>>> BACKENDS
('torch', 'onnx', 'onnx-int8', 'torch-int8')
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..loading import LoadedModel

__all__ = ["BACKENDS", "Forward", "make_forward"]

logger = logging.getLogger(__name__)

#: Accepted values of the scorer's ``backend`` option.
BACKENDS = ("torch", "onnx", "onnx-int8", "torch-int8")

#: What a backend gives the scorer: ``forward(model, tensors) -> logits`` for one padded batch;
#: ``model`` is the torch model for ``"torch"`` and ``None`` for the backends, which run their own.
Forward = Callable[[Any, "dict[str, torch.Tensor]"], "torch.Tensor"]


def check_backend(backend: str) -> str:
    """Validate a ``backend`` value and return it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def make_forward(backend: str, loaded: LoadedModel) -> Forward | None:
    """The batch runner for ``backend`` on ``loaded``; ``None`` for the plain torch model.

    Args:
        backend: one of :data:`BACKENDS`.
        loaded: the model and tokenizer the scorer loaded (used for export and quantization).

    Returns:
        ``None`` for ``"torch"`` (the scorer runs the model itself), else a callable that takes
        ``(model, tensors)`` and returns the logits as a float32 CPU tensor.
    """
    check_backend(backend)
    if backend == "torch":
        return None
    if backend == "torch-int8":
        from .torch_int8 import TorchInt8Runner

        return TorchInt8Runner.for_model(loaded)
    from .onnx import OnnxRunner

    return OnnxRunner.for_model(loaded, quantize=backend == "onnx-int8")
