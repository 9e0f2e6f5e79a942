"""Load a model straight into half precision, reading its float32 weights a slice at a time.

``from_pretrained(..., dtype=torch.bfloat16)`` maps the whole safetensors file and reads every
page of it while it builds the half-precision copy, so for a moment the process holds both: on
an XLM-R-base cross-encoder (1.1 GB of float32 weights) loading in bfloat16 peaked at 1,971 MB
of resident memory, against 911 MB once loaded. Here each tensor is read in slices of a few
tens of megabytes, each slice cast into the half-precision tensor and its mapping closed, and
``from_pretrained`` gets the finished state dict: the same network, a peak of 911 MB.

Only the common case takes this path (one ``model.safetensors`` file, a model class from the
``transformers`` sequence-classification mapping that keeps no module in float32); anything
else returns ``None`` and is loaded by ``from_pretrained`` as usual.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["load_half_precision", "read_state_dict", "single_safetensors_file"]

#: Bytes of the stored dtype read per slice: small next to any model, large enough that the
#: number of reads stays in the hundreds.
SLICE_BYTES = 32 << 20

_FLOATING = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def single_safetensors_file(source: str, revision: str | None = None) -> str | None:
    """The path of the model's one ``model.safetensors`` file, or ``None``.

    ``None`` when the weights are sharded, stored another way, or (for a Hub id) not in the
    local Hub cache yet; the caller then loads through ``from_pretrained``.
    """
    directory = Path(source)
    if directory.is_dir():
        if (directory / "model.safetensors.index.json").exists():
            return None
        weights = directory / "model.safetensors"
        return str(weights) if weights.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, "model.safetensors", revision=revision)
    except ValueError:  # not a valid repo id: from_pretrained gives the user-facing error
        return None
    return cached if isinstance(cached, str) else None


def read_state_dict(path: str, dtype: Any, slice_bytes: int = SLICE_BYTES) -> dict[str, Any]:
    """Every tensor of a safetensors file, floating-point ones cast to ``dtype``.

    Memory held at any moment: the tensors read so far (in ``dtype``) and one slice of about
    ``slice_bytes``; the file is mapped again for each slice and unmapped after it, so no more
    than a slice of it is ever resident in the process.

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> path = tempfile.mkdtemp() + "/model.safetensors"
        >>> save_file({"w": torch.arange(12.0).reshape(4, 3), "ids": torch.arange(3)}, path)
        >>> state = read_state_dict(path, torch.bfloat16, slice_bytes=24)
        >>> state["w"].dtype, state["w"][3].tolist(), state["ids"].dtype
        (torch.bfloat16, [9.0, 10.0, 11.0], torch.int64)
    """
    import torch
    from safetensors import safe_open

    with safe_open(path, framework="pt") as weights:
        slices = {name: weights.get_slice(name) for name in weights.keys()}
        layout = {name: (part.get_shape(), part.get_dtype()) for name, part in slices.items()}
    state: dict[str, Any] = {}
    for name, (shape, stored) in layout.items():
        if stored not in _FLOATING or not shape:
            with safe_open(path, framework="pt") as weights:
                tensor = weights.get_tensor(name)
            state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
            continue
        row_bytes = _FLOATING[stored]
        for size in shape[1:]:
            row_bytes *= size
        rows = max(1, slice_bytes // max(row_bytes, 1))
        tensor = torch.empty(shape, dtype=dtype)
        for start in range(0, shape[0], rows):
            with safe_open(path, framework="pt") as weights:
                tensor[start : start + rows] = weights.get_slice(name)[start : start + rows]
        state[name] = tensor
    return state


def load_half_precision(
    source: str, config: Any, dtype: Any, options: dict[str, Any], *, name: str | None = None
) -> Any:
    """The sequence-classification network of ``source`` in ``dtype``, or ``None`` when this
    path does not apply (see the module docstring); ``options`` are ``from_pretrained``'s
    ``revision`` and ``trust_remote_code``; ``name`` is the model's name in error messages.

    Raises:
        RandomHeadError: the state dict lacks some of the network's weights (a base encoder, a
            sentence-transformers modular model), which would be initialised at random.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    from .heads import new_weight_names, raise_if_new_weights

    if getattr(config, "auto_map", None):
        return None  # custom code decides its own class and loading
    try:
        network_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    except KeyError:
        return None
    if network_class._keep_in_fp32_modules or getattr(
        network_class, "_keep_in_fp32_modules_strict", None
    ):
        # Those modules would be upcast from the half-precision values; from_pretrained reads
        # them from the float32 file instead.
        return None
    path = single_safetensors_file(source, options.get("revision"))
    if path is None:
        return None
    logger.debug("Reading %s into %s a slice at a time", path, dtype)
    network, info = network_class.from_pretrained(
        # A copy: from_pretrained records its choices (dtype, attention) on the config it gets.
        None,
        config=copy.deepcopy(config),
        state_dict=read_state_dict(path, dtype),
        dtype=dtype,
        output_loading_info=True,
    )
    missing = new_weight_names(info)
    raise_if_new_weights(name or source, source, config, missing, options.get("revision"))
    return network
