"""Deprecated location, kept for one release: import from :mod:`bge_rerank_plugins.runtime`.

The loader moved to :mod:`bge_rerank_plugins.runtime.loading`, device and dtype choice and the
CPU probes to :mod:`bge_rerank_plugins.runtime.device`, the tokenizer helpers to
:mod:`bge_rerank_plugins.tokenization` (``padded_example_batch`` is now ``example_batch``) and
``cpu_bf16_autocast``, a training policy, to :mod:`bge_rerank_plugins.finetune.recipe`. This
module re-exports the old public names.
"""

from __future__ import annotations

from .runtime.device import (
    DEVICE_SPELLINGS,
    DTYPES,
    cpu_has_int8_dot,
    cpu_has_native_bf16,
    release_freed_memory,
    resolve_device,
    resolve_dtype,
)
from .runtime.loading import (
    TOKENIZER_FILES,
    LoadedModel,
    clear_model_cache,
    hub_offline,
    load_cross_encoder,
    model_length_limit,
)
from .tokenization import example_batch as padded_example_batch
from .tokenization import plain_encodings

__all__ = [
    "DEVICE_SPELLINGS",
    "DTYPES",
    "TOKENIZER_FILES",
    "LoadedModel",
    "clear_model_cache",
    "cpu_bf16_autocast",
    "cpu_has_int8_dot",
    "cpu_has_native_bf16",
    "hub_offline",
    "load_cross_encoder",
    "model_length_limit",
    "padded_example_batch",
    "plain_encodings",
    "release_freed_memory",
    "resolve_device",
    "resolve_dtype",
]


def cpu_bf16_autocast(precision: str) -> bool:
    """Deprecated here: use :func:`bge_rerank_plugins.finetune.recipe.cpu_bf16_autocast`.

    The same rule, kept as a copy because the runtime layer may not import fine-tuning.
    """
    return precision == "bf16" or (precision == "auto" and cpu_has_native_bf16())
