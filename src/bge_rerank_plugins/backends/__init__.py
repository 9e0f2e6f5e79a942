"""Deprecated location, kept for one release: use :mod:`bge_rerank_plugins.runtime.backends`.

The backends moved below the runtime layer, where each is one
:class:`~bge_rerank_plugins.runtime.backends.BackendSpec` in
:data:`~bge_rerank_plugins.runtime.backends.REGISTRY`. ``bge_rerank_plugins.backends.onnx`` and
``.torch_int8`` are the moved modules themselves (the same module objects).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..runtime.backends import BACKENDS, REGISTRY, BackendSpec, Runner, check_backend, get

if TYPE_CHECKING:
    from ..runtime.loading import LoadedModel

__all__ = ["BACKENDS", "REGISTRY", "BackendSpec", "Runner", "check_backend", "get", "make_forward"]


def make_forward(backend: str, loaded: LoadedModel) -> Any:
    """Deprecated: ``get(backend).build(loaded)`` is the runner (it takes the tensors only).

    Returns the old ``forward(model, tensors)`` shape, and ``None`` for backends that run the
    torch model itself, as before.
    """
    spec = get(backend)
    if spec.needs_torch_weights:
        return None
    runner = spec.build(loaded)
    return lambda _model, tensors: runner(tensors)
