"""The Gemma2 body of ``BAAI/bge-reranker-v2.5-gemma2-lightweight``, read at one chosen layer.

FlagEmbedding's ``CostWiseGemmaForCausalLM`` stacks ``transformers``' ``Gemma2DecoderLayer`` with
the pre-4.45 calling convention (no rotary ``position_embeddings``, a tuple back), so it does not
run under ``transformers`` 5 (docs/families.md). :class:`LightweightGemma2` is the network written
here, with the checkpoint's parameter names (``model.layers.N...``, ``lm_head.I.linear_head``), so
``from_pretrained`` reads the original files. The layers are ``transformers``'
``Gemma2DecoderLayer`` modules used as parameter holders, with their ``Gemma2RMSNorm`` and
``Gemma2MLP``; the attention, the rotary positions, the masks and the token compression are
computed here, and only what a score needs:

- the decoder layers below the chosen one (``cutoff``), none above it;
- in the last of them, the attention query, the MLP and the norms at each row's last real token
  only (the keys and values still cover the whole row);
- before each layer of ``compress_layers`` (layer 0 excepted), the passage tokens merged in runs
  of ``compress_ratio`` into their mean (a shorter last run: the mean of what it has), the query
  and prompt tokens kept, positions renumbered from 0 (FlagEmbedding's ``token_compress``);
- the final norm, one head and Gemma2's final soft cap ``tanh(x / c) * c``.

The Gemma2 specifics, as in its config: embeddings times ``sqrt(hidden_size)`` in the weights'
dtype; attention scores scaled by ``query_pre_attn_scalar ** -0.5`` and soft-capped at
``attn_logit_softcapping``; every ``"sliding_attention"`` layer (of ``layer_types``) sees only
the last ``sliding_window`` positions. Rows must be right-padded (the scorer's
:func:`~.backends.batches.pad_batch`).

FlagEmbedding reads the head of the ``i``-th chosen layer (by depth) as ``lm_head[i]``, so one
cutoff layer always reads ``lm_head[0]``, whichever layer it is; :meth:`LightweightGemma2.score`
does the same (the layer-wise MiniCPM family reads ``lm_head[layer - start_layer]`` instead).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.models.gemma2.modeling_gemma2 import Gemma2DecoderLayer, Gemma2RMSNorm

from .layer_heads import TopLayerForward

__all__ = ["LightweightGemma2", "compress_passages", "head_layers", "sliding_layers"]


def head_layers(config: Any) -> range:
    """The layers a score can be read at: ``start_layer`` to ``num_hidden_layers`` in steps of
    ``layer_sep`` (one head each in the checkpoint)."""
    top = int(config.num_hidden_layers)
    return range(int(getattr(config, "start_layer", top)), top + 1, int(config.layer_sep or 1))


def sliding_layers(config: Any) -> list[bool]:
    """Whether each layer attends over a sliding window: ``layer_types`` when the config has
    them, else Gemma2's alternation (even layers slide).

    >>> from types import SimpleNamespace
    >>> sliding_layers(SimpleNamespace(num_hidden_layers=3))
    [True, False, True]
    """
    kinds = getattr(config, "layer_types", None)
    if kinds:
        return [kind == "sliding_attention" for kind in kinds]
    return [index % 2 == 0 for index in range(int(config.num_hidden_layers))]


def compress_passages(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    query_lengths: torch.Tensor,
    prompt_lengths: torch.Tensor,
    ratio: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each right-padded row with its passage merged in runs of ``ratio`` tokens, and its mask.

    A row is ``query_lengths`` tokens, the passage, then ``prompt_lengths`` tokens (the rest is
    padding); it becomes the query, one mean per run of passage tokens, the prompt.

    >>> h = torch.arange(6.0).view(1, 6, 1)
    >>> new, keep = compress_passages(h, torch.ones(1, 6), torch.tensor([1]), torch.tensor([1]), 3)
    >>> new[0, :, 0].tolist(), keep.tolist()
    ([0.0, 2.0, 4.0, 5.0], [[1.0, 1.0, 1.0, 1.0]])
    """
    rows, width, size = hidden.shape
    device = hidden.device
    query, prompt = query_lengths.long(), prompt_lengths.long()
    passage = (mask.sum(dim=1).long() - query - prompt).clamp(min=0)
    kept = (passage + ratio - 1) // ratio
    lengths = query + kept + prompt
    new_width = int(lengths.max())
    at = torch.arange(new_width, device=device)[None, :]  # (1, new_width)
    in_query = at < query[:, None]
    in_passage = ~in_query & (at < (query + kept)[:, None])
    in_prompt = (at >= (query + kept)[:, None]) & (at < lengths[:, None])
    # Where each new position reads from: itself (query), its run (passage), or shifted (prompt).
    copied = torch.where(in_query, at, at - kept[:, None] + passage[:, None])
    step = torch.arange(ratio, device=device)
    run = (query[:, None] + (at - query[:, None]) * ratio)[..., None] + step  # (rows, new, ratio)
    real = in_passage[..., None] & (run < (query + passage)[:, None, None])
    first = (step == 0)[None, None, :]
    source = torch.where(in_passage[..., None], run, copied[..., None].expand_as(run))
    source = source.clamp(0, width - 1)
    count = real.sum(dim=-1, keepdim=True).clamp(min=1).to(hidden.dtype)
    weights = torch.where(
        in_passage[..., None],
        real.to(hidden.dtype) / count,
        (first & (in_query | in_prompt)[..., None]).to(hidden.dtype),
    )
    gathered = hidden.gather(1, source.reshape(rows, -1, 1).expand(-1, -1, size))
    merged = (gathered.view(rows, new_width, ratio, size) * weights[..., None]).sum(dim=2)
    return merged, (at < lengths[:, None]).to(mask.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in ``x``'s dtype, halves rotated (Gemma2's layout)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class _Head(nn.Module):
    """FlagEmbedding's ``CostWiseHead``: one relevance logit from a hidden state."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.linear_head = nn.Linear(size, 1, bias=False)


class _Decoder(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            Gemma2DecoderLayer(config, index) for index in range(config.num_hidden_layers)
        )
        self.norm = Gemma2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class LightweightGemma2(TopLayerForward, PreTrainedModel):
    """The lightweight Gemma2 reranker: :meth:`score` reads one layer at the last token.

    Built from the checkpoint's config (FlagEmbedding's ``CostWiseGemmaConfig`` with
    ``layer_wise: true``, a ``Gemma2Config``), so ``from_pretrained(folder, config=config)``
    loads the original weights.
    """

    config_class = PretrainedConfig
    base_model_prefix = "model"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model = _Decoder(config)
        self.lm_head = nn.ModuleList(_Head(config.hidden_size) for _ in head_layers(config))
        self.sliding = sliding_layers(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, Gemma2RMSNorm):  # scales by 1 + weight
            nn.init.zeros_(module.weight)

    def _rope(self, length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of positions 0 to ``length - 1``, (length, head_dim), in ``like``'s
        dtype: computed in float32 per call (no buffers for a meta-device load to lose)."""
        config = self.config
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        params = getattr(config, "rope_parameters", None) or {}
        theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        steps = torch.arange(0, dim, 2, device=like.device, dtype=torch.float) / dim
        angles = torch.outer(torch.arange(length, device=like.device).float(), 1.0 / theta**steps)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(like.dtype), angles.sin().to(like.dtype)

    def _attend(
        self,
        layer: Gemma2DecoderLayer,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        sliding: bool,
        last: torch.Tensor | None,
    ) -> torch.Tensor:
        """``layer``'s attention at every position, or (``last`` given) at ``last[row]``."""
        attn, config = layer.self_attn, self.config
        rows, width = x.shape[:2]
        dim = attn.head_dim
        cos, sin = rope
        keys = attn.k_proj(x).view(rows, width, -1, dim).transpose(1, 2)
        values = attn.v_proj(x).view(rows, width, -1, dim).transpose(1, 2)
        keys = _rotate(keys, cos, sin)
        at = torch.arange(width, device=x.device)[None, :].expand(rows, -1)
        if last is not None:
            at = last[:, None]
            x = x[torch.arange(rows, device=x.device), last].unsqueeze(1)
        queries = attn.q_proj(x).view(rows, x.shape[1], -1, dim).transpose(1, 2)
        queries = _rotate(queries, cos[at][:, None], sin[at][:, None])
        repeat = queries.shape[1] // keys.shape[1]
        keys = keys.repeat_interleave(repeat, dim=1)
        values = values.repeat_interleave(repeat, dim=1)
        scores = queries @ keys.transpose(2, 3) * float(config.query_pre_attn_scalar) ** -0.5
        cap = getattr(config, "attn_logit_softcapping", None)
        if cap is not None:
            scores = torch.tanh(scores / cap) * cap
        # Causal (a right-padded row's real tokens never see its padding), windowed if sliding.
        key_at = torch.arange(width, device=x.device)[None, None, :]
        allowed = key_at <= at[..., None]
        if sliding and getattr(config, "sliding_window", None):
            allowed &= key_at > at[..., None] - int(config.sliding_window)
        blocked = torch.finfo(scores.dtype).min
        scores = scores.masked_fill(~allowed[:, None], blocked)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
        out = (weights @ values).transpose(1, 2).reshape(rows, x.shape[1], -1)
        return attn.o_proj(out)

    def _layer(
        self,
        index: int,
        h: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        last: torch.Tensor | None,
    ) -> torch.Tensor:
        layer = self.model.layers[index]
        attended = self._attend(layer, layer.input_layernorm(h), rope, self.sliding[index], last)
        if last is not None:  # from here on, the last real position of each row only
            h = h[torch.arange(h.shape[0], device=h.device), last].unsqueeze(1)
        h = h + layer.post_attention_layernorm(attended)
        return h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))

    def score(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        layer: int,
        *,
        query_lengths: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        compress_ratio: int = 1,
        compress_layers: Collection[int] = (),
    ) -> torch.Tensor:
        """The relevance logit of each right-padded row from ``layer``'s hidden state, (rows,),
        float32. ``query_lengths`` and ``prompt_lengths`` (tokens before and after the passage
        of each row) are needed only to compress (``compress_ratio`` above 1)."""
        compress = compress_ratio > 1 and any(0 < k < layer for k in compress_layers)
        if compress and (query_lengths is None or prompt_lengths is None):
            raise ValueError("compress_ratio > 1 needs the query_lengths and prompt_lengths")
        mask = attention_mask
        h = self.model.embed_tokens(input_ids)
        h = h * torch.tensor(self.config.hidden_size**0.5, dtype=h.dtype)
        rope = self._rope(h.shape[1], h)
        for index in range(layer):
            if compress and index > 0 and index in compress_layers:
                h, mask = compress_passages(h, mask, query_lengths, prompt_lengths, compress_ratio)
                rope = self._rope(h.shape[1], h)
            last = mask.sum(dim=1).long() - 1 if index == layer - 1 else None
            h = self._layer(index, h, rope, last)
        if layer == 0:  # the embeddings themselves: still read at the last token
            last = mask.sum(dim=1).long() - 1
            h = h[torch.arange(h.shape[0], device=h.device), last].unsqueeze(1)
        logits = self.lm_head[0].linear_head(self.model.norm(h[:, 0]))[:, 0]
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits.float()
