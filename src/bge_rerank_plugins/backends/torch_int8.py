"""``torch-int8`` backend: dynamic int8 quantization of the ``Linear`` layers (CPU only).

Weights of every ``nn.Linear`` are stored as int8 with one scale per output channel; activations are
quantized on the fly per batch. Embeddings, LayerNorm and attention softmax stay float32.
PyTorch's quantized kernels exist only for CPUs, so a scorer on a GPU runs this backend on the
CPU (with a logged notice) rather than failing.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..loading import LoadedModel

__all__ = ["TorchInt8Runner", "quantize_linear_int8"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()


def quantize_linear_int8(model: Any) -> Any:
    """A dynamically int8-quantized copy of a float32 ``transformers`` model (CPU).

    >>> import torch
    >>> quantized = quantize_linear_int8(torch.nn.Sequential(torch.nn.Linear(4, 2)))
    >>> type(quantized[0]).__name__
    'Linear'
    """
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if _on_cpu_in_float32(model):
        # Copy the module tree but share every tensor with ``model``: quantizing in place then
        # swaps the copy's Linear layers for int8 ones, and the embeddings stay shared instead
        # of duplicated (a second float32 copy of XLM-R's 250k-token embeddings is 0.8 GB).
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
        source = copy.deepcopy(model, memo=shared).eval()
    else:  # a GPU or half-precision model: a float32 CPU copy of its own, the original untouched
        source = copy.deepcopy(model).to("cpu").float().eval()
    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine not in engines or torch.backends.quantized.engine == "none":
        for engine in ("x86", "fbgemm", "qnnpack", "onednn"):
            if engine in engines:
                torch.backends.quantized.engine = engine
                break
    # One scale per output channel: rankings stay much closer to float32 than per-tensor.
    return quantize_dynamic(
        source, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
    )


def _on_cpu_in_float32(model: Any) -> bool:
    import torch

    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in model.parameters())


class TorchInt8Runner:
    """Runs batches through an int8 copy of the scorer's model; one copy per loaded model."""

    def __init__(self, loaded: LoadedModel) -> None:
        if not str(loaded.device).startswith("cpu"):
            logger.warning(
                "backend='torch-int8' has CPU kernels only; the %s model runs on the CPU "
                "(use backend='torch' with dtype='float16' for speed on %s).",
                loaded.name,
                loaded.device,
            )
        self.model = quantize_linear_int8(loaded.float32_model())

    @classmethod
    def for_model(cls, loaded: LoadedModel) -> TorchInt8Runner:
        """The runner for ``loaded``, quantized once per process."""
        with _lock:
            runners = loaded.__dict__.setdefault("_backend_runners", {})
            if "torch-int8" not in runners:
                runners["torch-int8"] = cls(loaded)
            return runners["torch-int8"]

    def __call__(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            cpu = {k: v.to("cpu") for k, v in tensors.items()}
            return self.model(**cpu, return_dict=True).logits.float()
