"""The MiniCPM body of ``BAAI/bge-reranker-v2-minicpm-layerwise``, read at one chosen layer.

FlagEmbedding's ``LayerWiseMiniCPMForCausalLM`` (shipped as remote code next to the weights)
does not load under ``transformers`` 5: its config lookup of ``rope_scaling["type"]`` fails, its
``_tied_weights_keys`` is a list where a dict is expected, and its rotary tables are
non-persistent buffers that the meta-device loader leaves uninitialised, so the scores are NaN
(docs/families.md). :class:`LayerwiseMiniCPM` is the same network written here, with the
checkpoint's parameter names, so ``from_pretrained`` reads the original files; it runs none of the
folder's code and computes only what a score needs:

- the decoder layers up to the chosen one (``cutoff``), none above it;
- in the chosen layer, the attention query, the MLP and the final norm at each row's last real
  token only (the keys and values still cover the whole row);
- that layer's one-output head (``lm_head[cutoff - start_layer].linear_head``), a dot product.

The MiniCPM specifics, as in the checkpoint's config: token embeddings times ``scale_emb``; each
residual branch times ``scale_depth / sqrt(num_hidden_layers)``; ``head_dim = hidden_size //
num_attention_heads``; the hidden state of layer ``k`` is the final RMSNorm of the residual stream
after ``k`` layers. Rows must be right-padded (the scorer's
:func:`~.backends.batches.pad_batch`): plain causal attention then never reaches a padding token.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

from .layer_heads import TopLayerForward, rope_settings

__all__ = ["LayerwiseMiniCPM", "rope_settings"]


class _RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The mean square in float32 whatever the weights' dtype, then back, as MiniCPM does.
        scale = torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x * scale).to(x.dtype) * self.weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` (..., head_dim) in float32, halves rotated (the Llama layout)."""
    wide = x.float()
    first, second = wide.chunk(2, dim=-1)
    return (wide * cos + torch.cat((-second, first), dim=-1) * sin).to(x.dtype)


class _Attention(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = config.hidden_size // self.heads
        bias = bool(getattr(config, "attention_bias", False))
        width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, width, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_width, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_width, bias=bias)
        self.o_proj = nn.Linear(width, config.hidden_size, bias=bias)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        last: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention output at every position, or (``last`` given) at ``last[row]`` only."""
        cos, sin = rope  # (length, head_dim)
        rows = torch.arange(x.shape[0], device=x.device)
        keys = _rotate(self._split(self.k_proj(x), self.kv_heads), cos, sin)
        values = self._split(self.v_proj(x), self.kv_heads)
        if last is None:
            queries = _rotate(self._split(self.q_proj(x), self.heads), cos, sin)
            mask, causal = None, True
        else:
            at = x[rows, last].unsqueeze(1)
            angle = (cos[last][:, None, None], sin[last][:, None, None])
            queries = _rotate(self._split(self.q_proj(at), self.heads), *angle)
            # One query per row: it sees its own row up to itself (the rest is padding).
            mask = torch.arange(x.shape[1], device=x.device)[None, :] <= last[:, None]
            mask, causal = mask[:, None, None, :], False
        repeat = self.heads // self.kv_heads
        if repeat > 1:
            keys = keys.repeat_interleave(repeat, dim=1)
            values = values.repeat_interleave(repeat, dim=1)
        out = nn.functional.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask, is_causal=causal
        )
        out = out.transpose(1, 2).reshape(x.shape[0], queries.shape[2], -1)
        return self.o_proj(out)


class _MLP(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        size, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(size, inner, bias=False)
        self.up_proj = nn.Linear(size, inner, bias=False)
        self.down_proj = nn.Linear(inner, size, bias=False)
        self.act = ACT2FN[getattr(config, "hidden_act", "silu")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        eps = getattr(config, "rms_norm_eps", 1e-6)
        self.self_attn = _Attention(config)
        self.mlp = _MLP(config)
        self.input_layernorm = _RMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = _RMSNorm(config.hidden_size, eps)
        self.branch_scale = getattr(config, "scale_depth", 1.0) / math.sqrt(
            config.num_hidden_layers
        )

    def forward(
        self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], last: torch.Tensor | None
    ) -> torch.Tensor:
        attended = self.self_attn(self.input_layernorm(h), rope, last)
        if last is not None:  # from here on, the last real position of each row only
            h = h[torch.arange(h.shape[0], device=h.device), last].unsqueeze(1)
        h = h + attended * self.branch_scale
        return h + self.mlp(self.post_attention_layernorm(h)) * self.branch_scale


class _Decoder(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))
        self.norm = _RMSNorm(config.hidden_size, getattr(config, "rms_norm_eps", 1e-6))


class _Head(nn.Module):
    """FlagEmbedding's ``LayerWiseHead``: one relevance logit from a hidden state."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.linear_head = nn.Linear(size, 1, bias=False)


class LayerwiseMiniCPM(TopLayerForward, PreTrainedModel):
    """The layer-wise MiniCPM reranker: :meth:`score` reads one layer's head at the last token.

    Built from the checkpoint's config (FlagEmbedding's ``LayerWiseMiniCPMConfig``, ``head_type
    "simple"``); its parameters carry the checkpoint's names (``model.layers.N...``,
    ``lm_head.I.linear_head.weight``), so ``from_pretrained(folder, config=config)`` loads them.
    """

    config_class = PretrainedConfig
    base_model_prefix = "model"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model = _Decoder(config)
        self.start_layer = int(getattr(config, "start_layer", 0))
        size, top = config.hidden_size, config.num_hidden_layers
        if getattr(config, "head_multi", True):
            self.lm_head: nn.Module = nn.ModuleList(
                _Head(size) for _ in range(self.start_layer, top + 1)
            )
        else:
            self.lm_head = _Head(size)
        self.rope_theta = rope_settings(config)[1]
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, _RMSNorm):
            nn.init.ones_(module.weight)

    def head(self, layer: int) -> nn.Linear:
        """The one-output head of ``layer`` (FlagEmbedding's ``lm_head[layer - start_layer]``)."""
        heads = self.lm_head
        chosen = heads[layer - self.start_layer] if isinstance(heads, nn.ModuleList) else heads
        return chosen.linear_head

    def _rope(self, length: int, device: Any, dtype: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every position, (length, head_dim), computed per call in float32 (no
        buffers: a meta-device load would leave them empty)."""
        dim = self.config.hidden_size // self.config.num_attention_heads
        steps = torch.arange(0, dim, 2, device=device).float() / dim
        inverse = 1.0 / (self.rope_theta**steps)
        angles = torch.outer(torch.arange(length, device=device).float(), inverse)
        angles = torch.cat((angles, angles), dim=-1)
        # Cast to the weights' dtype and back, as the reference does before rotating in float32.
        return angles.cos().to(dtype).float(), angles.sin().to(dtype).float()

    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int
    ) -> torch.Tensor:
        """The relevance logit of each right-padded row from ``layer``'s hidden state, (rows,),
        float32."""
        decoder = self.model
        last = attention_mask.sum(dim=1) - 1
        h = decoder.embed_tokens(input_ids) * getattr(self.config, "scale_emb", 1.0)
        rope = self._rope(input_ids.shape[1], input_ids.device, h.dtype)
        for index in range(layer):
            h = decoder.layers[index](h, rope, last if index == layer - 1 else None)
        if layer == 0:  # the embeddings themselves: still read at the last token
            h = h[torch.arange(h.shape[0], device=h.device), last].unsqueeze(1)
        hidden = decoder.norm(h[:, 0])
        return self.head(layer)(hidden)[:, 0].float()
