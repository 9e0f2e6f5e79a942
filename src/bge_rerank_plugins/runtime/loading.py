"""Loading cross-encoders: offline-friendly errors, checks of a model's files, a process cache.

The cache is keyed by (model, device, dtype, revision, trust_remote_code), so a LlamaIndex
postprocessor and a LangChain compressor built on the same model in one process share one copy of
the weights. Device and dtype choice live in :mod:`.device`; the tokenizer hygiene in
:mod:`bge_rerank_plugins.tokenization`.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelFilesError, ModelNotFoundError, RandomHeadError
from ..tokenization import clean
from .device import resolve_device, resolve_dtype
from .heads import missing_from_checkpoint, new_weight_names, raise_if_new_weights

__all__ = [
    "TOKENIZER_FILES",
    "LoadedModel",
    "clear_model_cache",
    "hub_offline",
    "load_cross_encoder",
    "model_length_limit",
]

logger = logging.getLogger(__name__)


def model_length_limit(model: Any, tokenizer: Any) -> int:
    """Longest input the model accepts, from its position embeddings and tokenizer.

    ``model`` is a ``transformers`` model or its config; ``tokenizer`` may be None.

    >>> from transformers import BertConfig, XLMRobertaConfig
    >>> model_length_limit(BertConfig(max_position_embeddings=512), None)
    512
    >>> model_length_limit(XLMRobertaConfig(max_position_embeddings=514, pad_token_id=1), None)
    512
    """
    config = getattr(model, "config", model)
    limit = getattr(config, "max_position_embeddings", None) or 512
    if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"}:
        # RoBERTa-style position ids start after the padding index.
        limit -= (getattr(config, "pad_token_id", 1) or 1) + 1
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        limit = min(limit, tokenizer_limit)
    return int(limit)


@dataclass
class LoadedModel:
    """A model's tokenizer and config, its weights on demand, and what the scorer needs to know.

    The ``transformers`` network is loaded on first use of :attr:`model` and kept from then on.
    Backends that run a copy of their own (an ONNX Runtime session, int8 layers) build it from
    :meth:`cpu_float32_network` instead, so a scorer with such a backend does not also hold the
    torch weights: on the benchmark workload that was 330 MB of peak memory for an XLM-R-base
    model on ``backend="onnx"`` (docs/benchmarks.md).
    """

    tokenizer: Any
    config: Any
    device: str
    dtype: Any
    name: str
    max_length_limit: int
    source: str = ""
    load_options: dict[str, Any] = field(default_factory=dict, repr=False)
    #: The model's family (a key of :data:`~bge_rerank_plugins.runtime.families.FAMILIES`).
    family: str = "sequence-classification"
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    #: What backends build from this model and reuse (an ONNX Runtime session, int8 layers),
    #: keyed by the backend's own name for it; filled by the backends, under :attr:`lock`.
    runners: dict[str, Any] = field(default_factory=dict, repr=False)
    _network: Any = field(default=None, repr=False)
    _float32_copy: Any = field(default=None, repr=False)

    @property
    def model(self) -> Any:
        """The ``transformers`` network in :attr:`dtype` on :attr:`device` (loaded on first use)."""
        with self.lock:
            if self._network is None:
                self._network = self._load(self.dtype, self.device)
            return self._network

    @property
    def weights_loaded(self) -> bool:
        """Whether :attr:`model` holds the torch weights in memory now."""
        return self._network is not None

    def _load(self, dtype: Any, device: str) -> Any:
        import torch
        from transformers import AutoModelForSequenceClassification

        from .families import FAMILIES
        from .first_token import compute_last_layer_for_first_token
        from .half_weights import load_half_precision

        family_load = FAMILIES[self.family].load
        if family_load is not None:  # a family with a loader of its own (and its own checks)
            return family_load(self, dtype).eval().to(device)
        network = None
        try:
            if dtype in (torch.float16, torch.bfloat16):
                network = load_half_precision(
                    self.source, self.config, dtype, self.load_options, name=self.name
                )
            if network is None:
                network, info = AutoModelForSequenceClassification.from_pretrained(
                    self.source, dtype=dtype, output_loading_info=True, **self.load_options
                )
                # Never a random head: a base encoder or a modular model loads with a warning.
                revision = self.load_options.get("revision")
                missing = new_weight_names(info)
                raise_if_new_weights(self.name, self.source, self.config, missing, revision)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            local = Path(self.source).is_dir()
            if isinstance(error, OSError) and not local:
                raise  # the Hub could not provide them: load_cross_encoder explains that
            if isinstance(error, (ModelFilesError, RandomHeadError, ImportError)):
                raise
            raise ModelFilesError(
                f"model={self.name!r}: could not load the weights from {self.source} "
                f"({type(error).__name__}: {_one_line(error)}). A weights file "
                "(model.safetensors or pytorch_model.bin) is missing, truncated or corrupt, "
                "for example after an interrupted download or copy: fetch it again."
            ) from error
        network.eval().to(device)
        # Scores need the first token's last hidden state only (an exact saving, checked here).
        # The check tokenizes with padding: under the lock, since the tokenizer keeps padding
        # and truncation as state shared with every scorer on this model.
        with self.lock:
            shortened = compute_last_layer_for_first_token(network, self.tokenizer)
        logger.debug(
            "Loaded the weights of %s on %s in %s (last layer for the first token only: %s)",
            self.name,
            device,
            dtype,
            shortened,
        )
        return network

    def cpu_float32_network(self) -> Any:
        """The network in float32 on the CPU, to build another copy from (export, quantize).

        It is :attr:`model` itself when that is loaded, float32 and on the CPU; otherwise a
        network loaded for the caller alone, freed once the caller drops it, and :attr:`model`
        is neither loaded nor moved.
        """
        import torch

        with self.lock:
            network = self._network
            if (
                network is not None
                and self.dtype == torch.float32
                and str(self.device).startswith("cpu")
            ):
                return network
        return self._load(torch.float32, "cpu")

    def float32_model(self) -> Any:
        """The model in float32 on its device, loaded on first use from the original weights
        (not upcast from the half-precision copy), to rescore batches whose half-precision scores
        are not finite."""
        import torch

        if self.dtype == torch.float32:
            return self.model
        with self.lock:
            if self._float32_copy is None:
                logger.info("Loading %s in float32 to rescore non-finite batches.", self.name)
                self._float32_copy = self._load(torch.float32, self.device)
            return self._float32_copy


_cache: dict[tuple, LoadedModel] = {}
_cache_lock = threading.Lock()


def clear_model_cache() -> None:
    """Forget every cached model (the weights are freed once nothing else holds them)."""
    with _cache_lock:
        _cache.clear()


def _locate(name: str) -> str:
    """Where to load ``name`` from; tests replace this to stand tiny models in for Hub ids."""
    return name


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no Hub access (``1``, ``true``, ``yes``, ``on``).

    The spellings ``huggingface_hub`` itself treats as true; read at each call, not at import.
    """
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _not_found(model: str, error: Exception) -> ModelNotFoundError:
    why = (
        "the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)"
        if hub_offline()
        else "it could not be downloaded from the Hugging Face Hub"
    )
    return ModelNotFoundError(
        f"model={model!r} is not a local directory and {why} ({type(error).__name__}: {error}). "
        f"Download it on a connected machine, e.g. `hf download {model} --local-dir "
        f"./models/{model.split('/')[-1]}`, copy that folder here and pass its path: "
        f"CrossEncoderScorer('./models/{model.split('/')[-1]}')."
    )


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (library messages often span several)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


#: Files of which a model folder needs at least one to build its tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "vocab.json",
)


def _check_model_folder(name: str, folder: Path) -> None:
    """Refuse a local folder that cannot hold a usable cross-encoder, naming what is missing.

    Without these checks an empty folder fails deep inside ``transformers`` with text that does
    not name the folder, and a folder without tokenizer files loads with a tokenizer of special
    tokens only, which maps every word to ``[UNK]`` (so every passage gets the same score).
    """
    present = sorted(p.name for p in folder.iterdir())
    if not present:
        raise ModelFilesError(
            f"model={name!r}: the folder {folder} is empty. Pass the folder that holds "
            "config.json, the weights (model.safetensors) and the tokenizer files "
            "(tokenizer.json or vocab.txt), e.g. one written by save_pretrained or "
            "`hf download MODEL --local-dir DIR`."
        )
    if "config.json" not in present:
        nested = sorted(p.parent.name for p in folder.glob("*/config.json"))
        hint = f" Its subfolders {', '.join(nested)} do; pass one of them." if nested else ""
        raise ModelFilesError(
            f"model={name!r}: the folder {folder} holds no config.json (it holds "
            f"{', '.join(present[:8])}{', ...' if len(present) > 8 else ''}); it is not a "
            f"model folder.{hint}"
        )
    if not any(f in present for f in TOKENIZER_FILES):
        raise ModelFilesError(
            f"model={name!r}: the folder {folder} has no tokenizer files (none of "
            f"{', '.join(TOKENIZER_FILES)}). Without them every word would be scored as an "
            "unknown token. Copy the tokenizer files from where the model came from, or save "
            "them next to the weights with tokenizer.save_pretrained(folder)."
        )


def _check_tokenizer(name: str, tokenizer: Any) -> None:
    """Refuse a tokenizer that knows its special tokens only (every word becomes unknown)."""
    try:
        size = len(tokenizer)
        specials = len(set(getattr(tokenizer, "all_special_tokens", ())))
    except TypeError:
        return
    if size <= max(specials, 5):
        raise ModelFilesError(
            f"model={name!r}: its tokenizer has only {size} tokens (the special tokens), so "
            "every word would be scored as an unknown token. The tokenizer files "
            f"({', '.join(TOKENIZER_FILES[:2])}, ...) are missing or empty: copy them from where "
            "the model came from."
        )


def load_cross_encoder(
    model: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: str | None = "auto",
    use_fp16: bool | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    use_cache: bool = True,
    load_weights: bool = True,
    family: str = "auto",
) -> LoadedModel:
    """Load a cross-encoder and its tokenizer, reusing a cached copy.

    Args:
        model: a Hugging Face Hub id or a local directory.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; ``None`` picks the best available.
        dtype: ``"auto"``, ``"float32"``, ``"float16"`` or ``"bfloat16"``; see
            :func:`resolve_dtype`.
        use_fp16: FlagEmbedding's spelling of ``dtype="float16"``.
        revision: a Hub revision.
        trust_remote_code: run custom model code from the model repository (off by default).
        use_cache: reuse a model already loaded in this process with the same settings.
        load_weights: load the torch weights now (``False``: the tokenizer and config only, the
            weights on first use of :attr:`LoadedModel.model`; for backends that run their own
            copy of the model).
        family: ``"auto"`` (from the model's files) or a key of
            :data:`~bge_rerank_plugins.runtime.families.FAMILIES` (docs/families.md).
    """
    from transformers import AutoConfig, AutoTokenizer

    from .families import FAMILIES, family_choices, resolve_family

    if not isinstance(model, (str, os.PathLike)) or not str(model):
        raise TypeError(f"model must be a Hub id or a local directory path, got {model!r}")
    name = str(model)
    local = Path(_locate(name)).expanduser()
    source = str(local.resolve()) if local.is_dir() else str(local)
    resolved_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, use_fp16, resolved_device)
    if family not in family_choices():
        raise ValueError(f"family must be one of {family_choices()}, got {family!r}")
    key = (source, resolved_device, str(torch_dtype), revision, trust_remote_code, family)
    loaded = None
    if use_cache:
        with _cache_lock:
            loaded = _cache.get(key)
    looks_like_path = local.is_absolute() or name.startswith((".", "~"))
    if loaded is None and not local.is_dir() and looks_like_path:
        raise ModelNotFoundError(
            f"model={name!r} looks like a path but no such directory exists; pass the folder "
            "that holds config.json and the weights."
        )
    if loaded is None and local.is_dir():
        _check_model_folder(name, local)
    try:
        if loaded is None:
            options: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
            try:
                tokenizer = AutoTokenizer.from_pretrained(source, **options)
                config = AutoConfig.from_pretrained(source, **options)
            except (OSError, ValueError) as error:
                if not local.is_dir():
                    raise
                raise ModelFilesError(
                    f"model={name!r}: could not load the tokenizer or config from {source} "
                    f"({type(error).__name__}: {_one_line(error)})."
                ) from error
            _check_tokenizer(name, tokenizer)
            clean(tokenizer)
            family = resolve_family(family, source, config)
            check_files = FAMILIES[family].check_files
            if check_files is not None:  # refuse what the family cannot run, before any weight
                check_files(source, name, tokenizer, revision)
            loaded = LoadedModel(
                tokenizer=tokenizer,
                config=config,
                device=resolved_device,
                dtype=torch_dtype,
                name=name,
                max_length_limit=model_length_limit(config, tokenizer),
                source=source,
                load_options=options,
                family=family,
            )
            if use_cache:
                with _cache_lock:
                    loaded = _cache.setdefault(key, loaded)
        classifier = loaded.family == "sequence-classification"  # other families check their own
        if not load_weights and not loaded.weights_loaded and classifier:
            # Backends with a copy of their own (an ONNX graph exported earlier) may never load
            # the torch weights: check the checkpoint's weight names for a missing head.
            from .half_weights import single_safetensors_file

            weights = single_safetensors_file(source, revision)
            missing = missing_from_checkpoint(weights, loaded.config)
            raise_if_new_weights(name, source, loaded.config, missing, revision)
        if load_weights:
            # Loads them once per cache entry (also one made earlier without), so a broken
            # model fails here rather than at the first score.
            loaded.model  # noqa: B018
    except ModelFilesError:
        raise
    except OSError as error:
        if local.is_dir():
            raise
        raise _not_found(name, error) from error
    return loaded
