"""``ScorerConfig``: the one inference option set, named once with the same meaning everywhere.

:class:`~bge_rerank_plugins.CrossEncoderScorer` builds one from its keyword arguments, and every
other way of getting a scorer builds one too: the LlamaIndex and LangChain adapters
(:mod:`bge_rerank_plugins.adapter_options`), the ``bge-rerank`` command line
(:func:`bge_rerank_plugins.cli.add_scorer_arguments`) and Ray
(:func:`bge_rerank_plugins.ray_scoring.score_ray_dataset`). The checks live here, so an option
is refused with the same message wherever it is given, and a config can be built, compared,
copied with :func:`dataclasses.replace` and pickled (to Ray workers) without loading anything.

A test (``tests/test_config.py``) fails when a field is added here and a consumer neither
exposes it nor lists it, with a reason, in its explicit exclusions.

>>> from dataclasses import replace
>>> config = ScorerConfig(model="BAAI/bge-reranker-base", dtype="bfloat16", max_length="auto")
>>> config.backend, config.normalize, config.batch_size
('torch', True, None)
>>> replace(config, backend="torch-int8", dtype="float32").backend
'torch-int8'
>>> ScorerConfig(batch_size=True)
Traceback (most recent call last):
...
ValueError: batch_size must be a positive int or None, got True
>>> ScorerConfig(template="{title}\\n{text}").template.fields
('title', 'text')
>>> dtype_from_use_fp16("auto", True)
'float16'

What is not here, and why:

- ``use_fp16`` is FlagEmbedding's spelling of ``dtype="float16"``; the scorer and the adapters
  accept it and turn it into ``dtype`` (:func:`dtype_from_use_fp16`), so a config has one
  precision field, not two that can disagree.
- ``show_progress_bar`` changes no score: it is a display choice of one process (a terminal
  wants a bar, a server or a Ray worker does not), so it is an argument of
  :meth:`CrossEncoderScorer.from_config`, not part of the description of a scorer that may be
  shipped to other processes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, Union

from .fields import PassageTemplate

__all__ = [
    "DEFAULT_MODEL",
    "SCORER_CONFIG_FIELDS",
    "ScorerConfig",
    "TemplateLike",
    "as_template",
    "check_normalize",
    "dtype_from_use_fp16",
]

#: The model used when none is named.
DEFAULT_MODEL = "BAAI/bge-reranker-v2-m3"

#: What a ``template`` option accepts: a format string, a sequence of field names, a
#: :class:`~bge_rerank_plugins.fields.PassageTemplate`, or ``None`` (the default fields).
TemplateLike = Union[str, Sequence[str], PassageTemplate, None]  # noqa: UP007


def as_template(template: TemplateLike) -> PassageTemplate | None:
    """``template`` as a :class:`PassageTemplate` (``None`` stays ``None``).

    A sequence of field names is stored as a tuple, so the template (and a config holding it)
    can be hashed.
    """
    if template is None or isinstance(template, PassageTemplate):
        return template
    if isinstance(template, str):
        return PassageTemplate(template)
    if isinstance(template, Sequence):
        return PassageTemplate(tuple(template))
    raise TypeError(
        f"template must be a format string, a list of field names or a PassageTemplate, "
        f"got {type(template).__name__}"
    )


def _is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _torch_object(value: Any, kind: str) -> bool:
    """Whether ``value`` is a ``torch.dtype`` / ``torch.device``, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, getattr(torch, kind))


def _dtype_name(dtype: Any) -> str:
    """``dtype`` as one of :data:`~bge_rerank_plugins.runtime.device.DTYPES` (``None``: auto)."""
    from .runtime.device import DTYPES

    name = "auto" if dtype is None else dtype
    if _torch_object(name, "dtype"):
        name = str(name).removeprefix("torch.")
    if not isinstance(name, str) or name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return name


def dtype_from_use_fp16(dtype: Any, use_fp16: bool | None) -> str:
    """The ``dtype`` meant by ``dtype`` and FlagEmbedding's ``use_fp16`` flag together.

    ``use_fp16=True`` means ``"float16"`` (an error with another explicit dtype);
    ``use_fp16=False`` turns ``"auto"`` into ``"float32"``; ``None`` leaves ``dtype`` as is.
    ``dtype`` may be a name, ``None`` (``"auto"``) or a ``torch.dtype``.
    """
    name = _dtype_name(dtype)
    if use_fp16 is not None and not isinstance(use_fp16, bool):
        raise TypeError(
            f"use_fp16 must be True, False or None, got {type(use_fp16).__name__} {use_fp16!r}"
        )
    if use_fp16 is True:
        if name not in ("auto", "float16"):
            raise ValueError(
                f"use_fp16=True conflicts with dtype={dtype!r}; pass only one of them."
            )
        return "float16"
    if use_fp16 is False and name == "auto":
        return "float32"
    return name


@dataclass(frozen=True, kw_only=True)
class ScorerConfig:
    """What :class:`~bge_rerank_plugins.CrossEncoderScorer` loads and how it scores.

    Every field has the meaning (and default) of the scorer's keyword argument of the same name;
    see :class:`~bge_rerank_plugins.CrossEncoderScorer` for the details.

    Attributes:
        model: Hub id or local model directory (a path is stored as a string).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; ``None`` picks the best one
            where the scorer is built. Only the type is checked here: whether this machine has
            the device is checked when the model loads, since a config may be built on a
            machine (a Ray driver) other than the one that runs it.
        dtype: ``"auto"``, ``"float32"``, ``"float16"`` or ``"bfloat16"`` (``None`` and a
            ``torch.dtype`` are stored as the name).
        max_length: most tokens per pair: an int >= 8, ``"auto"`` or ``None``.
        query_max_length: most tokens kept of the query (``None``: half of ``max_length``).
        batch_size: most pairs per forward pass (``None``: 8 on CPU, 32 on an accelerator).
        token_budget: most padded tokens per forward pass (``None``: ``batch_size *``
            the longest pair).
        normalize: ``True``: sigmoid scores in [0, 1]; ``False``: raw logits;
            ``"calibrated"``: probabilities of relevance from the model folder's
            ``reranker_calibration.json`` (:mod:`bge_rerank_plugins.calibration`; without the
            file the scorer refuses to load).
        template: how records become passage text; stored as a
            :class:`~bge_rerank_plugins.fields.PassageTemplate` (or ``None``).
        cache_size: raw scores kept in an LRU cache (0: no cache).
        backend: one of :data:`bge_rerank_plugins.runtime.backends.BACKENDS`.
        revision: a Hub revision (branch, tag or commit).
        trust_remote_code: run custom model code from the model repository.
        family: how the checkpoint is loaded and scored: ``"auto"`` (from the model's files) or
            one of :func:`bge_rerank_plugins.runtime.families.family_choices` (docs/families.md).
        instruction: the task text of the causal-LM families (``None``: the family's default);
            the other families do not use it.
        cutoff_layer: the layer whose score head a layer-wise reranker reads (families
            ``"bge-layerwise"`` and ``"bge-lightweight"``, FlagEmbedding's
            ``cutoff_layers=[n]``): an int >= 1, checked
            against the model's layers when it loads; ``None``: the family's default, the top
            layer. A family that does not read it refuses a value (docs/families.md).
    """

    model: str = DEFAULT_MODEL
    device: str | None = None
    dtype: str = "auto"
    max_length: int | Literal["auto"] | None = None
    query_max_length: int | None = None
    batch_size: int | None = None
    token_budget: int | None = None
    normalize: bool | Literal["calibrated"] = True
    template: PassageTemplate | None = None
    cache_size: int = 0
    backend: str = "torch"
    revision: str | None = None
    trust_remote_code: bool = False
    family: str = "auto"
    instruction: str | None = None
    cutoff_layer: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised values are stored once, here
        model = self.model
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        if not isinstance(model, str) or not model:
            raise TypeError(f"model must be a Hub id or a local directory path, got {model!r}")
        set_(self, "model", model)
        # Imported here, not at the top: the backend registry is below the config, and a config
        # module that imports nothing heavy keeps `import bge_rerank_plugins` cheap.
        from .runtime.backends import BACKENDS

        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        batch_size, token_budget = self.batch_size, self.token_budget
        if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        if token_budget is not None and (not _is_int(token_budget) or token_budget < 1):
            raise ValueError(f"token_budget must be a positive int or None, got {token_budget!r}")
        max_length = self.max_length
        if (
            max_length is not None
            and max_length != "auto"
            and (not _is_int(max_length) or max_length < 8)
        ):
            raise ValueError(f"max_length must be an int >= 8, 'auto' or None, got {max_length!r}")
        query_max_length = self.query_max_length
        if query_max_length is not None and (not _is_int(query_max_length) or query_max_length < 1):
            raise ValueError(
                f"query_max_length must be a positive int or None, got {query_max_length!r}"
            )
        if not _is_int(self.cache_size) or self.cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {self.cache_size!r}")
        check_normalize(self.normalize)
        set_(self, "template", as_template(self.template))
        set_(self, "dtype", _dtype_name(self.dtype))
        device = self.device
        if _torch_object(device, "device"):
            device = str(device)
        if device is not None and not isinstance(device, str):
            raise TypeError(
                f"device must be a string such as 'cpu' or 'cuda:0' (or None), got "
                f"{type(device).__name__} {device!r}"
            )
        set_(self, "device", device)
        if self.revision is not None and not isinstance(self.revision, str):
            raise TypeError(
                f"revision must be a Hub branch, tag or commit (a string) or None, got "
                f"{type(self.revision).__name__} {self.revision!r}"
            )
        if not isinstance(self.trust_remote_code, bool):
            raise TypeError(
                f"trust_remote_code must be True or False, got "
                f"{type(self.trust_remote_code).__name__} {self.trust_remote_code!r}"
            )
        from .runtime.families import family_choices

        if not isinstance(self.family, str) or self.family not in family_choices():
            raise ValueError(f"family must be one of {family_choices()}, got {self.family!r}")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise TypeError(
                f"instruction must be a string or None, got {type(self.instruction).__name__}"
            )
        if isinstance(self.instruction, str) and not self.instruction.strip():
            raise ValueError("instruction must not be blank; pass None for the family's default")
        cutoff_layer = self.cutoff_layer
        if cutoff_layer is not None and (not _is_int(cutoff_layer) or cutoff_layer < 1):
            raise ValueError(
                f"cutoff_layer must be an int >= 1 (a layer with a score head) or None (the "
                f"family's default, the top layer), got {cutoff_layer!r}"
            )
        if self.family != "auto":
            # An explicit family is known now: refuse its unread options before any loading.
            from .runtime.families import FAMILIES, check_family_options

            check_family_options(FAMILIES[self.family], self)


def check_normalize(normalize: Any, name: str = "normalize") -> None:
    """Refuse a ``normalize`` that is not a bool or ``"calibrated"`` (``"no"`` is truthy, never
    silently true)."""
    if not isinstance(normalize, bool) and normalize != "calibrated":
        raise TypeError(
            f"{name} must be True (sigmoid scores in [0, 1]) or False (raw logits) or "
            f"'calibrated' (probabilities of relevance, from the model folder's "
            f"reranker_calibration.json), got {type(normalize).__name__} {normalize!r}"
        )


#: The names of :class:`ScorerConfig`'s fields, in order.
SCORER_CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ScorerConfig))
