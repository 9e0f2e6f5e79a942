"""The half-precision rescue every torch runner shares: a batch whose logits come out NaN or
infinite in float16 / bfloat16 runs once more through the float32 copy of the model
(:meth:`LoadedModel.float32_model <bge_rerank_plugins.runtime.loading.LoadedModel.float32_model>`),
with one logged warning. Weights broken in float32 too still give non-finite logits, which the
scorer refuses, naming :attr:`RescuingRunner.precision`.

It imports nothing of the runtime, so that every family's runner (the classifier's, the causal
LMs', the layer-wise one) can build on it without an import cycle through the loader.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["RescuingRunner"]

logger = logging.getLogger(__name__)


class RescuingRunner:
    """A runner calling :meth:`forward` on the loaded model, rescuing half-precision overflows.

    Subclasses define ``forward(network, tensors) -> logits``; the rescue calls it again with
    the float32 model.
    """

    def __init__(self, loaded: Any) -> None:
        import torch

        self.loaded = loaded
        #: Whether non-finite logits are retried in float32 (the dtype is a half one).
        self.rescues = loaded.dtype != torch.float32
        #: How a non-finite score was computed, for the scorer's error message.
        self.precision = (
            f"in {loaded.dtype} and again in float32"
            if self.rescues
            else "with backend='torch' in float32"
        )

    def forward(self, network: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        logits = self.forward(self.loaded.model, tensors)
        if self.rescues and not bool(torch.isfinite(logits).all()):
            logger.warning(
                "Non-finite scores in %s for a batch of %d pairs; rescoring it in float32.",
                self.loaded.dtype,
                logits.shape[0],
            )
            logits = self.forward(self.loaded.float32_model(), tensors)
        return logits
