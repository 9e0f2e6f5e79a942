"""Deprecated location, kept for one release: use :mod:`bge_rerank_plugins.runtime.half_weights`."""

from __future__ import annotations

from .runtime.half_weights import (
    SLICE_BYTES,
    load_half_precision,
    read_state_dict,
    single_safetensors_file,
)

__all__ = ["SLICE_BYTES", "load_half_precision", "read_state_dict", "single_safetensors_file"]
