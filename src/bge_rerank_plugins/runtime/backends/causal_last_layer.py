"""The last decoder layer of a causal LM computed at each row's last real token only.

A causal reranker reads one position (the last real token) of the last layer's output. Every
layer below it is needed at all positions (their keys and values feed the last layer's
attention), but in the last layer only the keys and values cover the whole row: the query
projection, the attention output, ``o_proj``, the residuals, the norms and the MLP are needed at
one position per row. :func:`last_token_hidden` runs the base model (``model.model``) up to the
last layer with the model's own code (embeddings, rotary tables, masks, key/value cache), stops
there, and computes the last layer at the last token with the layer's own submodules,
``transformers``' ``apply_rotary_pos_emb`` of the model's module and the attention function the
model is configured with (``sdpa`` or ``eager``), then the final norm. The same arithmetic as
:mod:`~bge_rerank_plugins.runtime.minicpm_layerwise` for our own MiniCPM body.

Recognised layers (:data:`LAYOUTS`): the pre-norm ones of Llama, Mistral, Qwen2, Qwen3 (with
``q_norm`` / ``k_norm``) and Gemma, and the sandwich-norm ones of Gemma2 and Gemma3 (post-attention
and pre/post-feedforward norms; attention soft-capping, ``query_pre_attn_scalar`` and sliding
windows come with the layer's own attributes and the model's own per-layer mask). The mask row of
each last token is read from the 4-D mask the model built for that layer, so sliding windows and
padding are the model's own. Anything else falls back to running the captured last layer whole
(exactly the full-layer path): another layer type or model type, another attention implementation
(flash, flex), a mask that is not a 4-D tensor, bidirectional attention, or hooks and an output
the glue does not know. The ``stats`` argument counts both outcomes.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["LAYOUTS", "last_layer_layout", "last_token_hidden"]

#: ``model_type`` -> (decoder layer class name, norm layout): ``"pre"`` (input and
#: post-attention norms, Llama-like) or ``"sandwich"`` (Gemma2 / Gemma3: the attention output and
#: the MLP output are normed too, and the MLP input has its own pre-feedforward norm).
LAYOUTS: dict[str, tuple[str, str]] = {
    "llama": ("LlamaDecoderLayer", "pre"),
    "mistral": ("MistralDecoderLayer", "pre"),
    "qwen2": ("Qwen2DecoderLayer", "pre"),
    "qwen3": ("Qwen3DecoderLayer", "pre"),
    "gemma": ("GemmaDecoderLayer", "pre"),
    "gemma2": ("Gemma2DecoderLayer", "sandwich"),
    "gemma3_text": ("Gemma3DecoderLayer", "sandwich"),
}

_ATTENTION = ("sdpa", "eager")
#: What the glue reads of an attention module.
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx")


class _Captured(Exception):
    """Raised by the pre-hook on the last layer: the base model's forward stops there."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__("last decoder layer reached")
        self.args, self.kwargs = args, kwargs


def last_layer_layout(network: Any, base: Any) -> str | None:
    """The norm layout of ``base``'s last layer when it can be computed at the last token alone
    (see :data:`LAYOUTS`), else ``None`` (the caller runs the base model whole).

    ``None`` for an unknown model or layer type, an attention implementation other than
    ``sdpa`` / ``eager``, bidirectional attention, or a base without ``layers`` and ``norm``.
    """
    config = getattr(base, "config", None) or network.config
    entry = LAYOUTS.get(str(getattr(config, "model_type", "")))
    layers = getattr(base, "layers", None)
    if entry is None or not layers or getattr(base, "norm", None) is None:
        return None
    if len(layers) != getattr(config, "num_hidden_layers", len(layers)):
        return None  # the model's loop runs layers[:num_hidden_layers]: the last may differ
    layer = layers[-1]
    attention = getattr(layer, "self_attn", None)
    if type(layer).__name__ != entry[0] or attention is None:
        return None
    if getattr(config, "_attn_implementation", None) not in _ATTENTION:
        return None
    if not getattr(attention, "is_causal", True):
        return None
    module = sys.modules.get(type(attention).__module__)
    helpers = ("apply_rotary_pos_emb", "eager_attention_forward")
    if not all(hasattr(attention, name) for name in _ATTENTION_PARTS) or not all(
        hasattr(module, name) for name in helpers
    ):
        return None  # another transformers version's layout: run the layer whole
    return entry[1]


def last_token_hidden(
    network: Any, base: Any, last: torch.Tensor, stats: dict[str, int] | None = None, **inputs: Any
) -> torch.Tensor:
    """The final-norm hidden state of each row at position ``last[row]`` of ``inputs``, (rows,
    hidden), computing the last decoder layer there only when :func:`last_layer_layout` allows.

    Args:
        network: the causal LM (its config names the model type and attention).
        base: its decoder (``network.model``), called with ``inputs`` (``input_ids``,
            ``attention_mask`` and, for a prefix cache, ``position_ids`` and
            ``past_key_values``).
        last: each row's last real position in ``inputs["input_ids"]``.
        stats: counts ``"trimmed"`` (last layer at the last token) and ``"whole"`` (fallback).
    """
    import torch

    layout = last_layer_layout(network, base)
    rows = torch.arange(last.shape[0], device=last.device)
    if layout is None:
        _count(stats, "whole")
        return base(**inputs).last_hidden_state[rows, last]
    layer = base.layers[-1]

    def stop(module: Any, args: tuple, kwargs: dict) -> None:
        raise _Captured(args, kwargs)

    handle = layer.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        base(**inputs)
    except _Captured as captured:
        args, kwargs = captured.args, captured.kwargs
    else:  # pragma: no cover - every recognised model calls its last layer
        raise RuntimeError(f"{type(base).__name__} never called its last decoder layer")
    finally:
        handle.remove()
    hidden = args[0] if args else kwargs.pop("hidden_states")
    mask = kwargs.get("attention_mask")
    known = mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 4)
    if not known or "position_embeddings" not in kwargs:
        _count(stats, "whole")  # inputs the glue does not read: the layer whole
        out = layer(*args, **kwargs)
        return base.norm(out[0] if isinstance(out, tuple) else out)[rows, last]
    _count(stats, "trimmed")
    return base.norm(_layer_at_last(layer, layout, hidden, kwargs, last, network.config))


def _count(stats: dict[str, int] | None, key: str) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + 1


def _layer_at_last(
    layer: Any, layout: str, hidden: torch.Tensor, kwargs: dict, last: torch.Tensor, config: Any
) -> torch.Tensor:
    """The layer's output at ``last[row]`` of each row, (rows, hidden), before the final norm."""
    import torch

    rows = torch.arange(hidden.shape[0], device=hidden.device)
    attended = _attention_at_last(layer.self_attn, layer.input_layernorm(hidden), kwargs, last)
    # From here on, the last real position of each row only.
    residual = hidden[rows, last].unsqueeze(1)
    if layout == "sandwich":
        h = residual + layer.post_attention_layernorm(attended)
        branch = layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
        return (h + branch)[:, 0]
    h = residual + attended
    return (h + layer.mlp(layer.post_attention_layernorm(h)))[:, 0]


def _split(projected: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(rows, length, heads * head_dim) -> (rows, length, heads, head_dim)."""
    return projected.view(*projected.shape[:-1], -1, head_dim)


def _attention_at_last(
    attention: Any, x: torch.Tensor, kwargs: dict, last: torch.Tensor
) -> torch.Tensor:
    """``attention``'s output at ``last[row]`` only, (rows, 1, hidden): keys and values of every
    position (and of the cache), one query per row, the row of the model's mask at that query."""
    import torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    module = sys.modules[type(attention).__module__]
    rotate = module.apply_rotary_pos_emb
    n, length = x.shape[:2]
    rows = torch.arange(n, device=x.device)
    head_dim = attention.head_dim
    q_norm = getattr(attention, "q_norm", None)
    k_norm = getattr(attention, "k_norm", None)
    keys = _split(attention.k_proj(x), head_dim)
    keys = (k_norm(keys) if k_norm is not None else keys).transpose(1, 2)
    values = _split(attention.v_proj(x), head_dim).transpose(1, 2)
    queries = _split(attention.q_proj(x[rows, last].unsqueeze(1)), head_dim)
    queries = (q_norm(queries) if q_norm is not None else queries).transpose(1, 2)
    cos, sin = kwargs["position_embeddings"]
    # The tables may be shared by the batch (one row): each row reads its own last position.
    cos_last = cos.expand(n, -1, -1)[rows, last].unsqueeze(1)
    sin_last = sin.expand(n, -1, -1)[rows, last].unsqueeze(1)
    # apply_rotary_pos_emb rotates a query and a key of one length: each is passed as both.
    queries = rotate(queries, queries, cos_last, sin_last)[0]
    keys = rotate(keys, keys, cos, sin)[1]
    cache = kwargs.get("past_key_values")
    if cache is not None:
        keys, values = cache.update(keys, values, attention.layer_idx)
    offset = keys.shape[2] - length  # cached positions before this call's first token
    mask = kwargs.get("attention_mask")
    if mask is None:  # no padding and plain causal: each query sees every key up to itself
        mask = torch.arange(keys.shape[2], device=x.device)[None, :] <= (offset + last)[:, None]
        mask = mask[:, None, None, :]
    else:
        mask = mask.expand(n, -1, -1, -1)[rows, :, last].unsqueeze(2)
    extra = {}
    if hasattr(attention, "sliding_window"):
        extra["sliding_window"] = attention.sliding_window
    if hasattr(attention, "attn_logit_softcapping"):
        extra["softcap"] = attention.attn_logit_softcapping
    if attention.config._attn_implementation == "eager":  # checked: sdpa or eager
        function = module.eager_attention_forward
    else:
        function = ALL_ATTENTION_FUNCTIONS["sdpa"]
    out, _ = function(
        attention,
        queries,
        keys,
        values,
        mask,
        dropout=attention.attention_dropout if attention.training else 0.0,
        scaling=attention.scaling,
        **extra,
    )
    return attention.o_proj(out.reshape(n, 1, -1).contiguous())
