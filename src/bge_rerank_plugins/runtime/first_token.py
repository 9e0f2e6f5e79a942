"""The last encoder layer computed for the first token only, the one the classification head reads.

A BERT-family sequence classifier (BERT, RoBERTa, XLM-RoBERTa: MiniLM cross-encoders,
bge-reranker-base/large/v2-m3) scores a pair from the final hidden state of its first token
(``[CLS]`` / ``<s>``). In the last layer, every other token's query, attention row, attention
output projection and feed-forward block are computed and then thrown away. Computing that
layer for the first token alone (its keys and values still come from every token) gives the
same scores for less work: the measured gain is in docs/benchmarks.md.

:func:`compute_last_layer_for_first_token` applies this to a loaded model whose class is known
to read the first token only, then checks it on a padded example batch against the unmodified
model and undoes it if the scores differ (a ``transformers`` release that changes the layer's
calling convention then costs speed, never correctness).
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
import torch.nn.functional as F

from ..tokenization import example_batch

__all__ = ["compute_last_layer_for_first_token"]

logger = logging.getLogger(__name__)

# Classes whose head reads hidden_states[:, 0] and nothing else (BERT's pooler, the RoBERTa
# classification head). A mean-pooling head (ModernBERT's default, for one) reads every token.
_FIRST_TOKEN_CLASSIFIERS = frozenset(
    {
        "BertForSequenceClassification",
        "RobertaForSequenceClassification",
        "XLMRobertaForSequenceClassification",
    }
)


def compute_last_layer_for_first_token(model: Any, tokenizer: Any) -> bool:
    """Make ``model``'s last encoder layer compute the first token only; True if it now does.

    The model's parameters and state dict are untouched (only the layer's ``forward`` is
    replaced), and the model's outputs other than ``logits`` hold the first token alone in the
    last hidden state. Models of other classes, and models whose scores on an example batch
    change, are left as they are.

    >>> import tempfile
    >>> from bge_rerank_plugins.testing import build_tiny_model
    >>> from transformers import AutoModelForSequenceClassification, AutoTokenizer
    >>> folder = build_tiny_model("bert", tempfile.mkdtemp())
    >>> model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    >>> compute_last_layer_for_first_token(model, AutoTokenizer.from_pretrained(folder))
    True
    """
    layer = _last_layer(model)
    if layer is None:
        return False
    parameter = next(model.parameters())
    example = {
        name: tensor.to(parameter.device) for name, tensor in example_batch(tokenizer).items()
    }
    returned: list[Any] = []
    hook = layer.register_forward_hook(lambda _module, _args, output: returned.append(output))
    try:
        with torch.inference_mode():
            reference = model(**example, return_dict=True).logits.float()
    finally:
        hook.remove()
    returns_tuple = isinstance(returned[0], tuple)
    layer.forward = types.MethodType(
        _first_token_forward_returning_tuple if returns_tuple else _first_token_forward, layer
    )
    try:
        with torch.inference_mode():
            changed = model(**example, return_dict=True).logits.float()
    except Exception as error:
        logger.debug("First-token last layer disabled for %s: %r", type(model).__name__, error)
        del layer.forward
        return False
    tolerance = 1e-4 if parameter.dtype == torch.float32 else 2e-2
    if changed.shape != reference.shape or not torch.allclose(
        changed, reference, rtol=tolerance, atol=tolerance
    ):
        logger.debug("First-token last layer disabled for %s: scores differ", type(model).__name__)
        del layer.forward
        return False
    return True


def _last_layer(model: Any) -> Any:
    """The last encoder layer, if ``model`` is a classifier this module knows how to shorten."""
    if type(model).__name__ not in _FIRST_TOKEN_CLASSIFIERS:
        return None
    config = getattr(model, "config", None)
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return None
    layers = getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)
    if not layers:
        return None
    layer = layers[-1]
    attention = getattr(getattr(layer, "attention", None), "self", None)
    needed = (
        all(hasattr(attention, name) for name in ("query", "key", "value", "attention_head_size"))
        and hasattr(layer.attention, "output")
        and hasattr(layer, "intermediate")
        and hasattr(layer, "output")
    )
    return layer if needed else None


def _first_query_mask(attention_mask: Any, length: int) -> torch.Tensor | None:
    """The attention mask's row for the first token, as scaled_dot_product_attention takes it."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"unsupported attention mask {type(attention_mask).__name__}")
    if attention_mask.dim() == 2:  # (batch, keys) of 1/0
        return attention_mask.bool()[:, None, None, :]
    if attention_mask.dim() == 4:  # (batch, 1 or heads, queries or 1, keys), bool or additive
        return attention_mask[:, :, :1] if attention_mask.size(-2) == length else attention_mask
    raise TypeError(f"unsupported attention mask shape {tuple(attention_mask.shape)}")


def _first_token_forward(
    self: Any, hidden_states: torch.Tensor, attention_mask: Any = None, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """A BERT layer's forward for the first token: (batch, 1, hidden) instead of (batch, length,
    hidden). Extra arguments (cache, cross-attention inputs) are unused by an encoder-only model."""
    attention = self.attention.self
    batch, length, _ = hidden_states.shape
    size = attention.attention_head_size
    first = hidden_states[:, :1]
    # Keys and values before the query: an int8 layer that shares one product among the three
    # (runtime/backends/torch_int8.py) then keeps the first token's small product, not the
    # whole batch's.
    key = attention.key(hidden_states).view(batch, length, -1, size).transpose(1, 2)
    value = attention.value(hidden_states).view(batch, length, -1, size).transpose(1, 2)
    query = attention.query(first).view(batch, 1, -1, size).transpose(1, 2)
    context = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=_first_query_mask(attention_mask, length),
        scale=getattr(attention, "scaling", size**-0.5),
    )
    attended = self.attention.output(context.transpose(1, 2).reshape(batch, 1, -1), first)
    return self.output(self.intermediate(attended), attended)


def _first_token_forward_returning_tuple(self: Any, *args: Any, **kwargs: Any) -> tuple:
    """The same for ``transformers`` releases whose layers return a tuple."""
    return (_first_token_forward(self, *args, **kwargs),)
