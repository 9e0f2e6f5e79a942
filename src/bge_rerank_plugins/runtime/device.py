"""Where and in what precision a model runs: device and dtype choice, CPU feature probes, and
handing freed memory back to the operating system.

Part of the runtime layer (:mod:`bge_rerank_plugins.runtime`): it imports only leaf modules.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from ..errors import DeviceUnavailableError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEVICE_SPELLINGS",
    "DTYPES",
    "cpu_has_int8_dot",
    "cpu_has_native_bf16",
    "release_freed_memory",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

#: Accepted values of the ``dtype`` option.
DTYPES = ("auto", "float32", "float16", "bfloat16")


#: Device spellings accepted by the ``device`` option (``N`` is a GPU index).
DEVICE_SPELLINGS = ("cpu", "cuda", "cuda:N", "mps")

# Common spellings of a GPU that torch does not know, and what they mean.
_DEVICE_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "cuda0": "cuda:0", "metal": "mps"}


def resolve_device(device: Any) -> str:
    """The device to run on: ``device`` checked against this machine, or the best available.

    ``None`` picks CUDA, then Apple MPS, then CPU. A device that torch does not know (``"gpu"``)
    is a :class:`ValueError` listing the valid spellings; a known kind that this machine lacks
    (``"cuda"`` without a visible GPU, ``"cuda:1"`` with one GPU, ``"mps"`` off Apple silicon) is
    a :class:`~bge_rerank_plugins.errors.DeviceUnavailableError` saying what is visible.
    """
    import torch

    if device is None:
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(
            f"device must be a string such as 'cpu' or 'cuda:0' (or None), got "
            f"{type(device).__name__} {device!r}"
        )
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        alias = _DEVICE_ALIASES.get(device.strip().lower())
        hint = f" (did you mean device={alias!r}?)" if alias else ""
        raise ValueError(
            f"device={device!r} is not a device name{hint}; use one of "
            f"{', '.join(DEVICE_SPELLINGS)}, or leave device unset (None) to pick the best "
            "available."
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch build has no CUDA support"
                if torch.version.cuda is None
                else "torch sees no CUDA GPU (check the driver and CUDA_VISIBLE_DEVICES)"
            )
            raise DeviceUnavailableError(
                f"device={device!r}: no CUDA device is visible ({why}). Pass device='cpu', or "
                "leave device unset to pick the best available."
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise DeviceUnavailableError(
                f"device={device!r}: only {count} CUDA device{'s are' if count != 1 else ' is'} "
                f"visible (cuda:0 to cuda:{count - 1}); pass one of those, or leave device "
                "unset."
            )
    elif parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceUnavailableError(
                f"device={device!r}: Apple MPS is not available on this machine. Pass "
                "device='cpu', or leave device unset to pick the best available."
            )
    return device


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU from ``/proc/cpuinfo`` (empty off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products in hardware (AVX512-BF16 or AMX).

    There, bfloat16 autocast trains a BERT-sized model about 1.7x faster than float32 (measured
    on a 2-core AMD EPYC with AVX512-BF16, docs/finetuning.md); without it, bfloat16 is emulated
    and slower than float32. Read from ``/proc/cpuinfo``, so False off Linux.
    """
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_int8_dot() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8).

    Without one, x86 int8 kernels multiply pairs of 8-bit values into 16-bit sums that can
    saturate when both operands use the full 8-bit range; with one, they accumulate in 32 bits.
    Read from ``/proc/cpuinfo``, so False off Linux. The int8 backends do not decide from this
    flag but from their kernels' measured behaviour
    (:func:`bge_rerank_plugins.runtime.backends.torch_int8.int_mm_weight_limit`,
    :func:`bge_rerank_plugins.runtime.backends.onnx.u8s8_saturates`), which also holds off Linux and
    under a capped instruction set (``ONEDNN_MAX_CPU_ISA``).
    """
    return bool(_cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def resolve_dtype(dtype: str | None, use_fp16: bool | None, device: str) -> torch.dtype:
    """The torch dtype to run in.

    ``"auto"`` means float16 on CUDA (what bge rerankers are served in) and float32 elsewhere.
    ``use_fp16=True`` is the FlagEmbedding spelling of ``dtype="float16"``. float16 on a CPU is
    not supported by every CPU kernel (the LayerNorm 'Half' error), so it falls back to float32
    with one logged notice; bfloat16 runs on CPU when asked for explicitly.
    """
    import torch

    name = "auto" if dtype is None else dtype
    if isinstance(name, torch.dtype):
        name = str(name).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if use_fp16 is True:
        if name not in ("auto", "float16"):
            raise ValueError(
                f"use_fp16=True conflicts with dtype={dtype!r}; pass only one of them."
            )
        name = "float16"
    elif use_fp16 is False and name == "auto":
        name = "float32"
    kind = device.split(":")[0]
    if name == "auto":
        name = "float16" if kind == "cuda" else "float32"
    if name == "float16" and kind == "cpu":
        logger.info(
            "float16 is not supported for inference on CPU (LayerNorm has no Half kernel); "
            "scoring in float32 instead. Pass dtype='bfloat16' for half precision on CPU."
        )
        name = "float32"
    return getattr(torch, name)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or ``None`` (found once: ``find_library`` runs a subprocess)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand memory freed by Python back to the operating system (glibc only; else a no-op).

    After a backend builds its copy of a model, the float32 network it was built from is freed,
    but glibc keeps the freed heap: on XLM-R base with ``torch-int8`` that was about 260 MB of
    resident memory for the life of the process, and the scorer's peak was 100 MB higher.
    """
    import gc

    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
