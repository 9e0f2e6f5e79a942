"""The causal-LM families: detection, loading, prompts and the yes/no token ids.

Two entries of :data:`~bge_rerank_plugins.runtime.families.FAMILIES` use this module:

- ``"bge-decoder-only"`` (``BAAI/bge-reranker-v2-gemma``): FlagEmbedding's ``FlagLLMReranker``
  layout; the score is the logit of ``Yes`` (the first token of ``"Yes"``) at the last token;
- ``"causal-yes-no"`` (``Qwen/Qwen3-Reranker-0.6B``, ``mixedbread-ai/mxbai-rerank-base-v2``,
  any sentence-transformers v6 CrossEncoder with a ``LogitScore`` module): the chat-template
  layout; the score is ``logit(yes) - logit(no)`` at the last token, with the ids of
  ``1_LogitScore/config.json`` when the folder has one, else of the tokens ``yes`` and ``no``.

``family="auto"`` picks them for a ``*ForCausalLM`` config: ``"causal-yes-no"`` when the folder
lists a LogitScore module, for Qwen2 / Qwen3 models and names such as ``Qwen3-Reranker`` or
``mxbai-rerank``; ``"bge-decoder-only"`` for every other causal LM.

>>> from transformers import GemmaConfig, Qwen3Config
>>> detect_bge_decoder("/m/bge-reranker-v2-gemma", GemmaConfig(architectures=["GemmaForCausalLM"]))
True
>>> detect_causal_yes_no("/m/Qwen3-Reranker-0.6B", Qwen3Config(architectures=["Qwen3ForCausalLM"]))
True
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ModelFilesError, RandomHeadError
from .st_layout import model_file

__all__ = [
    "causal_encoder",
    "causal_runner",
    "causal_token_ids",
    "check_causal_config",
    "check_causal_files",
    "detect_bge_decoder",
    "detect_causal_yes_no",
    "load_causal_lm",
    "load_refusing_missing",
    "prompt_encoder",
    "require_torch",
]

_LOGIT_SCORE = "LogitScore"
_YES_NO_TYPES = {"qwen2", "qwen3"}
_YES_NO_NAMES = ("qwen3-reranker", "mxbai-rerank")


def _is_causal(config: Any) -> bool:
    return any(str(a).endswith("ForCausalLM") for a in getattr(config, "architectures", None) or ())


def _json_file(source: str, relative: str, revision: str | None = None) -> Any:
    path = model_file(source, relative, revision)
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def logit_score_config(source: str, revision: str | None = None) -> dict[str, Any] | None:
    """The saved config of the folder's sentence-transformers ``LogitScore`` module, if any."""
    modules = _json_file(source, "modules.json", revision)
    if not isinstance(modules, list):
        return None
    for module in modules:
        if isinstance(module, dict) and str(module.get("type", "")).endswith(_LOGIT_SCORE):
            path = str(module.get("path", "") or "")
            saved = _json_file(source, f"{path}/config.json" if path else "config.json", revision)
            return saved if isinstance(saved, dict) else {}
    return None


def check_causal_config(config: Any, model_name: str) -> None:
    """Refuse a model that is not a causal LM (an explicit causal ``family=`` on a classifier)."""
    if not _is_causal(config):
        raise ValueError(
            f"model={model_name!r} is not a causal LM (its config names "
            f"{getattr(config, 'architectures', None)}); the causal families read next-token "
            "logits. Use family='auto' or 'sequence-classification' for a cross-encoder."
        )


def detect_causal_yes_no(source: str, config: Any) -> bool:
    """Whether ``family="auto"`` reads this model as a yes/no chat-template reranker."""
    if not _is_causal(config):
        return False
    name = source.lower().replace("_", "-")
    return (
        getattr(config, "model_type", "") in _YES_NO_TYPES
        or any(n in name for n in _YES_NO_NAMES)
        or logit_score_config(source) is not None
    )


def detect_bge_decoder(source: str, config: Any) -> bool:
    """Whether ``family="auto"`` reads this model as a BGE decoder-only reranker: a causal LM
    that is not a yes/no chat-template one."""
    return _is_causal(config) and not detect_causal_yes_no(source, config)


def check_causal_files(source: str, name: str, tokenizer: Any, revision: str | None) -> None:
    """Refuse a tokenizer without a padding id (batches are padded): use its end-of-text token."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ModelFilesError(
                f"model={name!r}: its tokenizer has neither a padding nor an end-of-sequence "
                "token, so batches cannot be padded; set tokenizer.pad_token and save it."
            )
        tokenizer.pad_token = tokenizer.eos_token


def causal_token_ids(family: str, loaded: Any) -> list[int]:
    """The vocabulary ids whose logits the score reads, as columns ``[no, yes]`` (log-odds:
    the family's score is column 1 minus column 0) or ``[Yes]`` (the logit itself)."""
    tokenizer = loaded.tokenizer
    if family == "bge-decoder-only":
        ids = tokenizer("Yes", add_special_tokens=False)["input_ids"]
        if not ids:
            raise ModelFilesError(f"model={loaded.name!r}: its tokenizer encodes 'Yes' as nothing.")
        return [ids[0]]
    saved = logit_score_config(loaded.source, loaded.load_options.get("revision"))
    if saved and saved.get("true_token_id") is not None:
        false = saved.get("false_token_id")
        true = int(saved["true_token_id"])
        return [int(false), true] if false is not None else [true]
    unk = tokenizer.unk_token_id
    yes, no = (tokenizer.convert_tokens_to_ids(t) for t in ("yes", "no"))
    if yes is None or no is None or unk in (yes, no):
        raise ModelFilesError(
            f"model={loaded.name!r}: its tokenizer has no 'yes' and 'no' tokens, which a "
            "yes/no causal reranker reads, and the folder has no LogitScore module naming "
            "others. Pass family='bge-decoder-only' for a model that answers 'Yes', or save the "
            "model with sentence-transformers' LogitScore(true_token_id=..., false_token_id=...)."
        )
    return [no, yes]


def load_refusing_missing(network_class: Any, loaded: Any, what: str, options: dict) -> Any:
    """``network_class.from_pretrained`` on the loaded model's folder with ``options``; refuses
    unreadable weights (:class:`ModelFilesError`) and weights left random (:class:`RandomHeadError`:
    a weight missing from the checkpoint, a tied ``lm_head.weight`` excepted). ``what`` names the
    network in the messages ("causal LM", "layer-wise reranker")."""
    try:
        network, info = network_class.from_pretrained(
            loaded.source, output_loading_info=True, **options
        )
    except (OSError, ValueError) as error:
        raise ModelFilesError(
            f"model={loaded.name!r}: could not load the {what} from {loaded.source} "
            f"({type(error).__name__}: {error}). A weights file is missing, truncated or "
            "corrupt: fetch it again."
        ) from error
    missing = set(info.get("missing_keys") or ())
    if getattr(network.config, "tie_word_embeddings", False):
        missing.discard("lm_head.weight")
    if missing:
        shown = ", ".join(sorted(missing)[:4])
        raise RandomHeadError(
            f"model={loaded.name!r}: {len(missing)} weight(s) of the {what} are not in its "
            f"checkpoint ({shown}); loading it would initialise them at random."
        )
    return network


def load_causal_lm(loaded: Any, dtype: Any) -> Any:
    """The ``AutoModelForCausalLM`` network in ``dtype``; refuses weights left random."""
    from transformers import AutoModelForCausalLM

    check_causal_config(loaded.config, loaded.name)
    options = {"dtype": dtype, **loaded.load_options}
    return load_refusing_missing(AutoModelForCausalLM, loaded, "causal LM", options)


def prompt_encoder(encoder_class: Any, loaded: Any, config: Any) -> Any:
    """``encoder_class`` (a :mod:`.causal_prompts` encoder) on the loaded tokenizer, with the
    truncation and instruction of a scorer's ``config`` (a ScorerConfig)."""
    return encoder_class(
        loaded.tokenizer,
        loaded.lock,
        max_length=config.max_length,
        query_max_length=config.query_max_length,
        model_max_length=loaded.max_length_limit,
        instruction=config.instruction,
    )


def causal_encoder(family: str, loaded: Any, config: Any) -> Any:
    """The pair encoder of a causal family for a scorer's ``config`` (a ScorerConfig)."""
    from .causal_prompts import BgeDecoderEncoder, ChatTemplateEncoder

    encoder = BgeDecoderEncoder if family == "bge-decoder-only" else ChatTemplateEncoder
    return prompt_encoder(encoder, loaded, config)


def require_torch(
    backend: str, rerankers: str, family: str, dtypes: str = "dtype='bfloat16'"
) -> None:
    """Refuse a ``backend`` other than ``"torch"`` for ``family`` (whose models ``rerankers``
    names); ``dtypes`` is the message's advice for a GPU."""
    if backend != "torch":
        raise ValueError(
            f"backend={backend!r} does not run {rerankers} (family={family!r}); use "
            f"backend='torch' (with {dtypes} on a GPU)."
        )


def causal_runner(family: str, loaded: Any, backend: str) -> Any:
    """The :class:`~.backends.causal.CausalRunner` of a causal family (torch backend only)."""
    require_torch(backend, "causal-LM rerankers", family, "dtype='float16' or 'bfloat16'")
    from .backends.causal import CausalRunner

    return CausalRunner(loaded, causal_token_ids(family, loaded))
