"""Loading cross-encoders: device and precision choice, offline-friendly errors, a process cache.

The cache is keyed by (model, device, dtype, revision, trust_remote_code), so a LlamaIndex
postprocessor and a LangChain compressor built on the same model in one process share one copy of
the weights.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DeviceUnavailableError, ModelFilesError, ModelNotFoundError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEVICE_SPELLINGS",
    "DTYPES",
    "LoadedModel",
    "clear_model_cache",
    "cpu_has_int8_dot",
    "cpu_has_native_bf16",
    "cpu_bf16_autocast",
    "load_cross_encoder",
    "model_length_limit",
    "padded_example_batch",
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
    (:func:`bge_rerank_plugins.backends.torch_int8.int_mm_weight_limit`,
    :func:`bge_rerank_plugins.backends.onnx.u8s8_saturates`), which also holds off Linux and
    under a capped instruction set (``ONEDNN_MAX_CPU_ISA``).
    """
    return bool(_cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_bf16_autocast(precision: str) -> bool:
    """Whether work on the CPU under a ``precision`` setting runs in bf16 autocast.

    ``"bf16"`` always does; ``"auto"`` does where the CPU has bf16 hardware
    (:func:`cpu_has_native_bf16`); anything else (``"fp32"``, ``"fp16"``) does not. Shared by
    the fine-tuning engine and the teacher scores, so both pick bf16 on the same machines.
    """
    return precision == "bf16" or (precision == "auto" and cpu_has_native_bf16())


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


def model_length_limit(model: Any, tokenizer: Any) -> int:
    """Longest input the model accepts, from its position embeddings and tokenizer.

    ``model`` is a ``transformers`` model or its config.
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


def padded_example_batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    """Two (query, passage) pairs of different lengths, tokenized and padded (PyTorch tensors).

    The padding matters to its users (tracing an ONNX export, checking a modified layer): a
    batch without padding could hide a mistake in how the attention mask is handled.
    """
    return dict(
        tokenizer(
            ["what is a panda?", "capital of china"],
            ["The giant panda is a bear native to China that eats bamboo.", "Beijing."],
            padding=True,
            return_tensors="pt",
        )
    )


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
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
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

        from .first_token import compute_last_layer_for_first_token
        from .half_weights import load_half_precision

        network = None
        try:
            if dtype in (torch.float16, torch.bfloat16):
                network = load_half_precision(self.source, self.config, dtype, self.load_options)
            if network is None:
                network = AutoModelForSequenceClassification.from_pretrained(
                    self.source, dtype=dtype, **self.load_options
                )
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            local = Path(self.source).is_dir()
            if isinstance(error, OSError) and not local:
                raise  # the Hub could not provide them: load_cross_encoder explains that
            if isinstance(error, (ModelFilesError, ImportError)):
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
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    why = (
        "the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)"
        if offline
        else "it could not be downloaded from the Hugging Face Hub"
    )
    return ModelNotFoundError(
        f"model={model!r} is not a local directory and {why} ({type(error).__name__}: {error}). "
        f"Download it on a connected machine, e.g. `hf download {model} --local-dir "
        f"./models/{model.split('/')[-1]}`, copy that folder here and pass its path: "
        f"CrossEncoderScorer('./models/{model.split('/')[-1]}')."
    )


def _clean_tokenizer(tokenizer: Any) -> None:
    # Some exported tokenizer.json files (e.g. all-MiniLM-L6-v2's) bake in truncation at 128 and
    # fixed padding, and transformers leaves whatever its last call set; the scorer decides
    # truncation itself, so clear both on the backend.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()


def plain_encodings(tokenizer: Any, texts: list[str]) -> list[Any]:
    """Each text's ``tokenizers`` encoding: no special tokens, not truncated, not padded.

    The fast tokenizer's backend keeps truncation and padding as state, and ``transformers``
    leaves it as the last call set it: after ``tokenizer(..., padding=True)`` (the load-time
    check, an ONNX export, a user's own call) ``encode_batch`` pads every text to the longest.
    Both are reset here, so counts and offsets are the texts' own. The caller serialises calls
    on a shared tokenizer (:attr:`LoadedModel.lock`).

    >>> import tempfile
    >>> from transformers import AutoTokenizer
    >>> from bge_rerank_plugins.testing import build_tiny_model
    >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("bert", tempfile.mkdtemp()))
    >>> texts = ["panda", "the giant panda eats bamboo"]
    >>> _ = tokenizer(texts, padding=True)
    >>> [len(e.ids) for e in plain_encodings(tokenizer, texts)] == [
    ...     len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    True
    """
    _clean_tokenizer(tokenizer)
    return tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)


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
) -> LoadedModel:
    """Load a sequence-classification cross-encoder and its tokenizer, reusing a cached copy.

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
    """
    from transformers import AutoConfig, AutoTokenizer

    if not isinstance(model, (str, os.PathLike)) or not str(model):
        raise TypeError(f"model must be a Hub id or a local directory path, got {model!r}")
    name = str(model)
    local = Path(_locate(name)).expanduser()
    source = str(local.resolve()) if local.is_dir() else str(local)
    resolved_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, use_fp16, resolved_device)
    key = (source, resolved_device, str(torch_dtype), revision, trust_remote_code)
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
            _clean_tokenizer(tokenizer)
            loaded = LoadedModel(
                tokenizer=tokenizer,
                config=config,
                device=resolved_device,
                dtype=torch_dtype,
                name=name,
                max_length_limit=model_length_limit(config, tokenizer),
                source=source,
                load_options=options,
            )
            if use_cache:
                with _cache_lock:
                    loaded = _cache.setdefault(key, loaded)
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
