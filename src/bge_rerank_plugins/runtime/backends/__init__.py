"""Inference backends for :class:`~bge_rerank_plugins.CrossEncoderScorer`: one registry.

The scorer tokenizes, sorts and batches pairs itself; a backend only runs one padded batch and
returns its logits (a :class:`~.base.Runner`). Each backend is one :class:`~.base.BackendSpec`
in :data:`REGISTRY`, which holds everything the package says about it: the scorer asks it once
which runner to build and whether to load the torch weights, and the docstrings, the adapters'
field description and the CLI help are written from it. Measurements behind the speed claims
are in ``docs/benchmarks.md``.

>>> from bge_rerank_plugins.runtime.backends import BACKENDS, REGISTRY
>>> BACKENDS
('torch', 'onnx', 'onnx-int8', 'torch-int8')
>>> REGISTRY["torch-int8"].exact, REGISTRY["torch-int8"].cpu_only
(False, True)

Exported and quantized ONNX files are cached in an ``onnx/`` folder inside the model directory
(or under ``~/.cache/bge_rerank_plugins/onnx`` when that is not writable) and reused while the
weights are unchanged; runners that cost an export or a quantization are kept in
:attr:`LoadedModel.runners <bge_rerank_plugins.runtime.loading.LoadedModel.runners>`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import BackendSpec, Runner

if TYPE_CHECKING:
    from ..loading import LoadedModel

__all__ = ["BACKENDS", "REGISTRY", "BackendSpec", "Runner", "check_backend", "describe", "get"]


# The builders import their module on first use: the registry itself must stay cheap to import
# (the config and the adapters check names against it without loading torch).
def _torch(loaded: LoadedModel) -> Runner:
    from .torch import TorchRunner

    return TorchRunner(loaded)


def _onnx(loaded: LoadedModel) -> Runner:
    from .onnx import OnnxRunner

    return OnnxRunner.for_model(loaded, quantize=False)


def _onnx_int8(loaded: LoadedModel) -> Runner:
    from .onnx import OnnxRunner

    return OnnxRunner.for_model(loaded, quantize=True)


def _torch_int8(loaded: LoadedModel) -> Runner:
    from .torch_int8 import TorchInt8Runner

    return TorchInt8Runner.for_model(loaded)


#: Every backend by name, in the order help texts list them.
REGISTRY: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            name="torch",
            exact=True,
            needs_torch_weights=True,
            cpu_only=False,
            extra=None,
            description="the transformers model as loaded, on any device and in any dtype; "
            "the reference scores, and with float16 the fast path on a GPU",
            build=_torch,
        ),
        BackendSpec(
            name="onnx",
            exact=True,
            needs_torch_weights=False,
            cpu_only=False,
            extra="onnx",
            description="the model exported once to ONNX, run by ONNX Runtime in float32; "
            "scores within about 1e-5 of torch, about 1.6x sentence-transformers on a CPU",
            build=_onnx,
        ),
        BackendSpec(
            name="onnx-int8",
            exact=False,
            needs_torch_weights=False,
            cpu_only=True,
            extra="onnx",
            description="the ONNX export with dynamically quantized int8 weights and one "
            "activation scale per batch; coarser and slower than torch-int8",
            build=_onnx_int8,
        ),
        BackendSpec(
            name="torch-int8",
            exact=False,
            needs_torch_weights=False,
            cpu_only=True,
            extra=None,
            description="int8 products with per-channel weight and per-token activation "
            "scales; the fastest on CPU, about 2.4x to 3.4x sentence-transformers, with a mean "
            "per-query Spearman of 0.994 against float32",
            build=_torch_int8,
        ),
    )
}

#: Accepted values of the scorer's ``backend`` option.
BACKENDS = tuple(REGISTRY)


def get(name: str) -> BackendSpec:
    """The :class:`~.base.BackendSpec` called ``name``; ValueError naming the choices if none."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}") from None


def check_backend(backend: str) -> str:
    """Validate a ``backend`` value and return it."""
    get(backend)
    return backend


def describe(separator: str = "; ") -> str:
    """Every backend's one-line :meth:`~.base.BackendSpec.summary`, for help texts."""
    return separator.join(spec.summary() for spec in REGISTRY.values())
