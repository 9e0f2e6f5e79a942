"""Refuse a checkpoint whose loading would leave weights newly initialised (a random head).

``AutoModelForSequenceClassification.from_pretrained`` loads a base encoder, a bi-encoder or a
sentence-transformers modular model (``modules.json``: Transformer -> Pooling -> Dense) without
an error: it logs a warning and initialises the missing ``classifier`` at random, so every score
is noise. Measured on a MiniLM cross-encoder saved by sentence-transformers v6 as modules: the
scorer returned [-0.049, -0.016] where sentence-transformers gives [-0.187, -0.224]. The loaders
pass the weights ``transformers`` reports missing to :func:`raise_if_new_weights`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import RandomHeadError

__all__ = [
    "describe_layout",
    "missing_from_checkpoint",
    "new_weight_names",
    "raise_if_new_weights",
]

logger = logging.getLogger(__name__)

#: How many missing weight names an error message lists.
SHOWN = 4


def _has_modules_json(source: str, revision: str | None = None) -> bool:
    folder = Path(source)
    if folder.is_dir():
        return (folder / "modules.json").is_file()
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(source, "modules.json", revision=revision), str)
    except Exception:  # not a repo id, no cache: nothing to tell
        return False


def describe_layout(source: str, config: Any, revision: str | None = None) -> str:
    """What the checkpoint at ``source`` looks like, for an error message.

    >>> from transformers import BertConfig
    >>> describe_layout("/nowhere", BertConfig(architectures=["BertModel"]))[:22]
    'a base encoder or bi-e'
    """
    if _has_modules_json(source, revision):
        return (
            "a sentence-transformers modular model (Transformer/Pooling/Dense modules listed "
            "in modules.json): not supported by family='sequence-classification'. Pass "
            "family='auto' (the default) or family='st-modular', which loads its modules"
        )
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        saved = ", ".join(architectures) or "no architectures in config.json"
        return (
            f"a base encoder or bi-encoder without a reranking head ({saved}): fine-tune it "
            "first (CrossEncoderFinetuneEngine), or pass a cross-encoder checkpoint such as "
            "BAAI/bge-reranker-base"
        )
    return (
        "an unsupported layout (its config names a sequence-classification model but its "
        "weights file lacks those weights: an incomplete or converted checkpoint)"
    )


def new_weight_names(info: dict[str, Any]) -> set[str]:
    """The weights ``from_pretrained(..., output_loading_info=True)`` reports it initialised:
    missing from the checkpoint, or stored with another shape.

    >>> sorted(new_weight_names({"missing_keys": {"b"}, "mismatched_keys": [("a", (1,), (2,))]}))
    ['a', 'b']
    """
    names = set(info.get("missing_keys") or ())
    for entry in info.get("mismatched_keys") or ():
        names.add(entry[0] if isinstance(entry, tuple) else entry)
    return names


def raise_if_new_weights(
    name: str,
    source: str,
    config: Any,
    missing: Iterable[str],
    revision: str | None = None,
) -> None:
    """Raise :class:`RandomHeadError` if ``missing`` (weights the checkpoint lacks) is not empty."""
    missing = sorted(missing)
    if not missing:
        return
    shown = ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
    raise RandomHeadError(
        f"model={name!r}: {len(missing)} weight(s) of the reranking model are not in its "
        f"checkpoint ({shown}); loading it would initialise them at random, so every score "
        f"would be noise. {source} looks like {describe_layout(source, config, revision)}."
    )


def missing_from_checkpoint(path: str | None, config: Any) -> list[str]:
    """The head parameters a sequence-classification model of ``config`` would miss in the
    checkpoint's one ``model.safetensors`` file at ``path``, read from its key names only (no
    weights are loaded); empty when that cannot be told (no such file, custom code, an unknown
    model type).

    For backends that never load the torch weights (an ONNX graph exported earlier). Only the
    parameters outside the base model count: inside it ``transformers`` renames legacy keys
    (``gamma`` -> ``weight``) on load, which a comparison of names would report as missing.
    The full check is the loaders' own, on ``transformers``' loading report.
    """
    if path is None or getattr(config, "auto_map", None):
        return []
    import torch
    from safetensors import safe_open
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    network_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING.get(type(config), None)
    if network_class is None:
        return []
    try:
        with safe_open(path, framework="pt") as weights:
            stored = set(weights.keys())
        with torch.device("meta"):
            network = network_class(copy.deepcopy(config))
        expected = [n for n, _ in network.named_parameters()]
    except Exception as error:  # an unreadable file: the weights' own loading explains it
        logger.debug("Could not list the weights of %s: %s", path, error)
        return []
    prefix = getattr(network_class, "base_model_prefix", "") + "."
    if prefix != "." and not any(key.startswith(prefix) for key in stored):
        stored = {prefix + key for key in stored}  # saved from the bare base model
    return [n for n in expected if n not in stored and not n.startswith(prefix)]
