"""Deprecated location, kept for one release: use :mod:`bge_rerank_plugins.runtime.first_token`."""

from __future__ import annotations

from .runtime.first_token import compute_last_layer_for_first_token

__all__ = ["compute_last_layer_for_first_token"]
