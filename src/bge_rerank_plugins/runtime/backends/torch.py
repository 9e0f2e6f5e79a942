"""``torch`` backend: the ``transformers`` model as loaded, in the scorer's dtype and device.

In half precision (float16, bfloat16) a batch whose logits come out NaN or infinite is run once
more through a float32 copy of the model (:meth:`LoadedModel.float32_model
<bge_rerank_plugins.runtime.loading.LoadedModel.float32_model>`), with one logged warning: an
overflow in half precision is then no error, while weights that are broken in float32 too still
give non-finite logits, which the scorer refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..float32_rescue import RescuingRunner

if TYPE_CHECKING:
    import torch

    from ..loading import LoadedModel

__all__ = ["TorchRunner", "run_model"]


def run_model(model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of a ``transformers`` classifier for one padded batch."""
    return model(**tensors, return_dict=True).logits


class TorchRunner(RescuingRunner):
    """Runs batches through :attr:`LoadedModel.model`, rescuing half-precision overflows
    (:class:`~bge_rerank_plugins.runtime.float32_rescue.RescuingRunner`).

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
        super().__init__(loaded)
        self._forward = forward

    def forward(self, network: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._forward(network, tensors)
