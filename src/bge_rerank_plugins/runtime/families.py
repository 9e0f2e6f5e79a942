"""Model families: which checkpoints the scorer can run, and how it reads a score from them.

A family is one :class:`ModelFamily` entry in :data:`FAMILIES`. Today there is one,
``"sequence-classification"``: cross-encoders loaded with ``transformers``'
``AutoModelForSequenceClassification``
(:func:`~bge_rerank_plugins.runtime.loading.load_cross_encoder`), fed the tokenizer's
(query, passage) pair encoding, whose score is the relevance logit (one label) or the log-odds
of "relevant" (two labels).

Where a new family plugs in (say a causal LM that answers "Yes" or "No", such as
bge-reranker-v2-gemma): one entry here with its own ``check`` (a config this family can run)
and ``score`` (the logit of "Yes" at the last token, against "No"), a loader for its
``transformers`` class next to
:func:`~bge_rerank_plugins.runtime.loading.load_cross_encoder`, and its prompt in the pair
encoding. The backends need no change: a runner turns a padded batch into logits
whatever they mean.

>>> import torch
>>> FAMILIES["sequence-classification"].score(torch.tensor([[0.5, 2.0]]))
tensor([1.5000])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "FAMILIES",
    "FAMILY_OPTIONS",
    "RUNNER_SCORE_SETTINGS",
    "ModelFamily",
    "build_encoder",
    "build_runner",
    "check_family_options",
    "detect_family",
    "family_choices",
    "resolve_family",
]


@dataclass(frozen=True)
class ModelFamily:
    """One kind of checkpoint the scorer runs.

    Attributes:
        name: the family's key in :data:`FAMILIES`.
        check: ``check(config, model_name)`` raises ValueError, naming the model and the fix,
            for a ``transformers`` config this family cannot score.
        score: ``score(logits) -> scores``, one raw relevance score per row (float32; its
            sigmoid is the probability of "relevant").
        detect: ``detect(source, config) -> bool``, whether ``family="auto"`` picks this family
            for the model at ``source`` (a local folder or a Hub id); ``None``: never picked
            automatically (``"sequence-classification"`` is the fallback).
        load: ``load(loaded, dtype) -> network``, the torch network (a module whose
            ``forward(input_ids, attention_mask, token_type_ids=None, return_dict=True)`` returns
            an object with ``.logits``), refusing missing weights itself; ``None``: the
            ``transformers`` sequence-classification loader of :mod:`.loading`.
        check_files: ``check_files(source, name, tokenizer, revision)``, run when the model is
            first loaded, before any weights are read: raises naming what is missing, and may
            set ``tokenizer.model_max_length`` from the family's own files.
        encoder: ``encoder(loaded, config) -> encoder`` with the interface of
            :class:`~bge_rerank_plugins.tokenization.PairEncoder` (the family's prompt);
            ``None``: the tokenizer's (query, passage) pair encoding (:func:`build_encoder`).
        runner: ``runner(loaded, backend, **options) -> Runner`` replacing the backend's runner
            (the causal families' :class:`~.backends.causal.CausalRunner`), given the config's
            value of each of :attr:`options` by name; ``None``: the backend's own
            (:func:`build_runner`).
        options: the :data:`FAMILY_OPTIONS` (ScorerConfig fields) this family reads, passed
            to ``runner``; a non-``None`` value of any other is refused
            (:func:`check_family_options`), never silently ignored.
    """

    name: str
    check: Callable[[Any, str], None]
    score: Callable[[torch.Tensor], torch.Tensor]
    detect: Callable[[str, Any], bool] | None = None
    load: Callable[[Any, Any], Any] | None = None
    check_files: Callable[[str, str, Any, str | None], None] | None = None
    encoder: Callable[[Any, Any], Any] | None = None
    runner: Callable[..., Any] | None = None
    options: tuple[str, ...] = ()


#: The ScorerConfig options only some families read (each names them in ``options``); the
#: scorer refuses a non-``None`` value for a family that does not (:func:`check_family_options`).
FAMILY_OPTIONS: tuple[str, ...] = ("cutoff_layer",)
#: Runner attributes that change a score (a layer-wise or lightweight runner's layer and token
#: compression, settable on ``scorer.runner``): part of the score cache's key.
RUNNER_SCORE_SETTINGS: tuple[str, ...] = ("cutoff_layer", "compress_ratio", "compress_layers")


def _check_labels(config: Any, model_name: str) -> None:
    num_labels = getattr(config, "num_labels", 1)
    if num_labels not in (1, 2):
        raise ValueError(
            f"model={model_name!r} has {num_labels} output labels; a reranker needs 1 "
            "(a relevance logit) or 2 (not relevant / relevant)."
        )


def _classifier_score(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if logits.shape[-1] == 2:
        # Log-odds of "relevant": its sigmoid equals the softmax probability of label 1.
        return logits[:, 1] - logits[:, 0]
    return logits[:, 0]


def _no_check(config: Any, model_name: str) -> None:
    """For families whose loader checks the layout itself (the output count included)."""


def _st_modular_detect(source: str, config: Any) -> bool:
    from .st_layout import is_st_modular

    return is_st_modular(source)


def _st_modular_load(loaded: Any, dtype: Any) -> Any:
    from .st_modular import load_st_modular

    return load_st_modular(loaded, dtype)


def _st_modular_check_files(source: str, name: str, tokenizer: Any, revision: str | None) -> None:
    from .st_layout import check_st_modular_files

    check_st_modular_files(source, name, tokenizer, revision)


def _causal(function: str) -> Callable[..., Any]:
    """``function`` of :mod:`.causal_family`, imported on first call (torch-free import)."""

    def call(*args: Any) -> Any:
        from . import causal_family

        return getattr(causal_family, function)(*args)

    call.__name__ = function
    return call


def _causal_with_name(function: str, family: str) -> Callable[..., Any]:
    """``function(family, *args)`` of :mod:`.causal_family`."""
    return lambda *args: _causal(function)(family, *args)


def _layerwise(function: str) -> Callable[..., Any]:
    """``function`` of :mod:`.causal_layerwise`, imported on first call (torch-free import)."""

    def call(*args: Any, **options: Any) -> Any:
        from . import causal_layerwise

        return getattr(causal_layerwise, function)(*args, **options)

    call.__name__ = function
    return call


def _lightweight(function: str) -> Callable[..., Any]:
    """``function`` of :mod:`.causal_lightweight`, imported on first call (torch-free import)."""

    def call(*args: Any, **options: Any) -> Any:
        from . import causal_lightweight

        return getattr(causal_lightweight, function)(*args, **options)

    call.__name__ = function
    return call


#: Every family the scorer can run, by name.
FAMILIES: dict[str, ModelFamily] = {
    "sequence-classification": ModelFamily(
        name="sequence-classification", check=_check_labels, score=_classifier_score
    ),
    # A sentence-transformers cross-encoder saved as modules (modules.json: Transformer ->
    # Pooling -> Dense [-> LayerNorm -> Dense]): runtime/st_modular.py builds it as one network.
    "st-modular": ModelFamily(
        name="st-modular",
        check=_no_check,
        score=_classifier_score,
        detect=_st_modular_detect,
        load=_st_modular_load,
        check_files=_st_modular_check_files,
    ),
    # FlagEmbedding's layer-wise MiniCPM (bge-reranker-v2-minicpm-layerwise): one head per
    # layer, read at the last token (runtime/causal_layerwise.py). Before "bge-decoder-only",
    # which claims every other *ForCausalLM.
    "bge-layerwise": ModelFamily(
        name="bge-layerwise",
        check=_layerwise("check_layerwise_config"),
        score=_classifier_score,
        detect=_layerwise("detect_layerwise"),
        load=_layerwise("load_layerwise"),
        check_files=_causal("check_causal_files"),
        encoder=_layerwise("layerwise_encoder"),
        runner=_layerwise("layerwise_runner"),
        options=("cutoff_layer",),
    ),
    # FlagEmbedding's lightweight Gemma2 (bge-reranker-v2.5-gemma2-lightweight): one layer
    # read at the last token, passage tokens optionally compressed (runtime/causal_lightweight.py).
    # Before "bge-decoder-only" too.
    "bge-lightweight": ModelFamily(
        name="bge-lightweight",
        check=_lightweight("check_lightweight_config"),
        score=_classifier_score,
        detect=_lightweight("detect_lightweight"),
        load=_lightweight("load_lightweight"),
        check_files=_causal("check_causal_files"),
        encoder=_lightweight("lightweight_encoder"),
        runner=_lightweight("lightweight_runner"),
        options=("cutoff_layer",),
    ),
    # Causal LMs read at the last token (runtime/causal_family.py): FlagEmbedding's
    # bge-reranker-v2-gemma layout, and the chat-template yes/no layout (Qwen3-Reranker).
    "bge-decoder-only": ModelFamily(
        name="bge-decoder-only",
        check=_causal("check_causal_config"),
        score=_classifier_score,
        detect=_causal("detect_bge_decoder"),
        load=_causal("load_causal_lm"),
        check_files=_causal("check_causal_files"),
        encoder=_causal_with_name("causal_encoder", "bge-decoder-only"),
        runner=_causal_with_name("causal_runner", "bge-decoder-only"),
    ),
    "causal-yes-no": ModelFamily(
        name="causal-yes-no",
        check=_causal("check_causal_config"),
        score=_classifier_score,
        detect=_causal("detect_causal_yes_no"),
        load=_causal("load_causal_lm"),
        check_files=_causal("check_causal_files"),
        encoder=_causal_with_name("causal_encoder", "causal-yes-no"),
        runner=_causal_with_name("causal_runner", "causal-yes-no"),
    ),
}


def build_encoder(family: ModelFamily, loaded: Any, config: Any) -> Any:
    """The pair encoder a scorer with ``config`` (a ScorerConfig) uses for ``loaded``."""
    if family.encoder is not None:
        return family.encoder(loaded, config)
    from ..tokenization import PairEncoder

    return PairEncoder(
        loaded.tokenizer,
        loaded.lock,
        max_length=config.max_length,
        query_max_length=config.query_max_length,
        model_max_length=loaded.max_length_limit,
    )


def build_runner(family: ModelFamily, spec: Any, loaded: Any, config: Any = None) -> Any:
    """The runner of backend ``spec`` (a BackendSpec) for ``loaded``, or the family's own,
    given ``config``'s (a ScorerConfig's) values of the family's :attr:`~ModelFamily.options`
    (``None``: the factory's defaults)."""
    if family.runner is not None:
        options = {} if config is None else {n: getattr(config, n) for n in family.options}
        return family.runner(loaded, spec.name, **options)
    return spec.build(loaded)


def check_family_options(family: ModelFamily, config: Any) -> None:
    """Refuse a ``config`` (a ScorerConfig) that sets a :data:`FAMILY_OPTIONS` entry ``family``
    does not read, naming the option, the family and the families that read it.

    >>> from types import SimpleNamespace
    >>> check_family_options(FAMILIES["sequence-classification"], SimpleNamespace(
    ...     model="m", cutoff_layer=None))
    >>> check_family_options(FAMILIES["st-modular"], SimpleNamespace(model="m", cutoff_layer=2))
    Traceback (most recent call last):
    ...
    ValueError: cutoff_layer=2 is not read by family 'st-modular' (model='m'); ...
    """
    for option in FAMILY_OPTIONS:
        value = getattr(config, option, None)
        if value is None or option in family.options:
            continue
        readers = [f.name for f in FAMILIES.values() if option in f.options]
        raise ValueError(
            f"{option}={value!r} is not read by family {family.name!r} (model={config.model!r}); "
            f"only family {' or '.join(map(repr, readers))} takes {option}. Leave {option}=None "
            "for this model, or pick a model of that family."
        )


def family_choices() -> tuple[str, ...]:
    """The values ``family=`` accepts: ``"auto"`` and every registered family, read at each call
    (a family registered later is accepted too).

    >>> family_choices()[:3]
    ('auto', 'sequence-classification', 'st-modular')
    """
    return ("auto", *FAMILIES)


def detect_family(source: str, config: Any) -> str:
    """The family ``family="auto"`` picks: the first registered family whose ``detect`` says
    so, else ``"sequence-classification"``.

    >>> from transformers import BertConfig
    >>> detect_family("/nowhere", BertConfig(architectures=["BertForSequenceClassification"]))
    'sequence-classification'
    """
    for family in FAMILIES.values():
        if family.detect is not None and family.detect(source, config):
            return family.name
    return "sequence-classification"


def resolve_family(requested: str, source: str, config: Any) -> str:
    """``requested`` (``"auto"`` or a family name) as the name of a registered family.

    Raises ValueError naming the choices for an unknown name.
    """
    if requested == "auto":
        return detect_family(source, config)
    if not isinstance(requested, str) or requested not in FAMILIES:
        raise ValueError(f"family must be one of {family_choices()}, got {requested!r}")
    return requested
