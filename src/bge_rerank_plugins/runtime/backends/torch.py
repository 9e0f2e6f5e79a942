"""``torch`` backend: the ``transformers`` model as loaded, in the scorer's dtype and device.

In half precision (float16, bfloat16) a batch whose logits come out NaN or infinite is run once
more through a float32 copy of the model (:meth:`LoadedModel.float32_model
<bge_rerank_plugins.runtime.loading.LoadedModel.float32_model>`), with one logged warning: an
overflow in half precision is then no error, while weights that are broken in float32 too still
give non-finite logits, which the scorer refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..loading import LoadedModel

__all__ = ["TorchRunner", "run_model"]

logger = logging.getLogger(__name__)


def run_model(model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of a ``transformers`` classifier for one padded batch."""
    return model(**tensors, return_dict=True).logits


class TorchRunner:
    """Runs batches through :attr:`LoadedModel.model`, rescuing half-precision overflows.

    Args:
        loaded: the model the scorer loaded.
        forward: ``forward(model, tensors) -> logits``; the default calls the model. A test or
            an instrumented run passes its own to see (or change) each call, float32 rescue
            included: the rescue calls it again with the float32 model.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        forward: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor] = run_model,
    ) -> None:
        import torch

        self.loaded = loaded
        self.forward = forward
        #: Whether non-finite logits are retried in float32 (the dtype is a half one).
        self.rescues = loaded.dtype != torch.float32
        #: How a non-finite score was computed, for the scorer's error message.
        self.precision = (
            f"in {loaded.dtype} and again in float32"
            if self.rescues
            else "with backend='torch' in float32"
        )

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
