"""The runner of causal-LM rerankers: the yes/no logits at each pair's last token, computed cheaply.

A causal reranker's score is one or two entries of its next-token logits at the last position
(``Yes``; or ``yes`` against ``no``). The peers compute the whole vocabulary projection:
FlagEmbedding at every position, sentence-transformers at the last one. This runner
(:class:`CausalRunner`, ``mode="prefix"``) does less, with the same result:

- ``"last"``: the base model's hidden states (``model.model``), the last real position of each
  row, and a dot product with the one or two rows of the LM head that the score reads (and
  Gemma-2's final soft-capping, if the config has one);
- ``"prefix"`` (default): also the tokens before the passage (the instruction and the query,
  marked ``token_type_ids == 0`` by :mod:`bge_rerank_plugins.runtime.causal_prompts`) are run
  once per query; their key/value cache is expanded over that query's passages, which are
  right-padded after it, given position ids that continue the prefix, and read at their last
  real token. Recent prefixes are kept (:attr:`CausalRunner.max_prefixes`) and reused across
  batches and calls while the weights are unchanged (their in-place version is part of the key,
  so a fine-tuning step invalidates them);
- ``"full"``: the whole causal-LM forward, all positions through the LM head (the reference).

In ``"last"`` and ``"prefix"`` the last decoder layer is computed at the last token only (keys
and values of every position, everything else at one position per row:
:mod:`~.causal_last_layer`) for the layer types it knows; others run that layer whole, as does
:attr:`CausalRunner.trim_last_layer` ``False``. The rows of a batch also run in groups of similar
length (:func:`length_groups`, :attr:`CausalRunner.split_padding`): a pair is computed up to its
group's longest row rather than the batch's, which changes nothing but the padding computed.

Inputs are right-padded rows (the scorer's :func:`~.batches.pad_batch`); rows are read at
``attention_mask.sum() - 1``. Models with sliding-window layers fall back from ``"prefix"`` to
``"last"``. In float16 / bfloat16 a batch with non-finite logits is run again in float32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..float32_rescue import RescuingRunner
from .causal_last_layer import last_token_hidden

if TYPE_CHECKING:
    import torch

__all__ = ["MODES", "CausalRunner", "length_groups"]


#: The runner's modes, cheapest last.
MODES = ("full", "last", "prefix")


def _full_attention_only(config: Any) -> bool:
    """Whether every layer attends to all earlier tokens (no sliding window)."""
    types = getattr(config, "layer_types", None)
    if types:
        return all(t == "full_attention" for t in types)
    return not getattr(config, "sliding_window", None) or not getattr(
        config, "use_sliding_window", True
    )


def length_groups(lengths: Sequence[int], group_cost: int) -> list[list[int]]:
    """Rows grouped by length so that ``sum(len(group) * longest) + group_cost * groups`` is
    least: each group is padded only to its own longest row (exact: rows are independent).

    >>> length_groups([300, 40, 290, 35, 38], group_cost=100)
    [[0, 2], [1, 4, 3]]
    >>> length_groups([300, 40, 290], group_cost=10_000)
    [[0, 2, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    # best[j]: the least cost of the j longest rows; cut[j]: where its last group starts.
    best, cut = [0] * (len(order) + 1), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        best[end], cut[end] = min(
            (best[start] + (end - start) * lengths[order[start]] + group_cost, start)
            for start in range(end)
        )
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


class CausalRunner(RescuingRunner):
    """Runs padded batches of a causal-LM reranker and returns the logits of ``token_ids``.

    Args:
        loaded: the :class:`~bge_rerank_plugins.runtime.loading.LoadedModel` (a causal LM).
        token_ids: the vocabulary ids whose logits are returned, in this order (the column
            order of the result: ``[no, yes]`` for a log-odds score, ``[Yes]`` for BGE's).
        mode: ``"prefix"``, ``"last"`` or ``"full"`` (see the module).
        max_prefixes: how many prefix key/value caches are kept.
        trim_last_layer: in ``"last"`` and ``"prefix"``, compute the last decoder layer at the
            last token only (:mod:`~.causal_last_layer`); ``False`` runs it at every position.
        split_padding: in ``"last"`` and ``"prefix"``, run a batch's rows in groups of similar
            lengths (:func:`length_groups`) so that fewer padding tokens are computed.

    >>> runner = CausalRunner(loaded, [no_id, yes_id])  # doctest: +SKIP
    >>> runner(tensors).shape  # doctest: +SKIP
    torch.Size([8, 2])
    """

    def __init__(
        self,
        loaded: Any,
        token_ids: Sequence[int],
        *,
        mode: str = "prefix",
        max_prefixes: int = 8,
        trim_last_layer: bool = True,
        split_padding: bool = True,
    ) -> None:

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__(loaded)
        self.token_ids = [int(t) for t in token_ids]
        self.mode = mode
        self.max_prefixes = max_prefixes
        self.trim_last_layer = trim_last_layer
        self.split_padding = split_padding
        #: A forward pass's fixed cost in padded tokens (:func:`length_groups`): small on a CPU,
        #: where a token costs far more than a pass's Python overhead; large on an accelerator.
        self.group_cost = 256 if str(getattr(loaded, "device", "cpu")).startswith("cpu") else 4096
        self._prefixes: OrderedDict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        #: Prefix forward passes run and reused (for tests and benchmarks).
        self.prefix_stats = {"computed": 0, "reused": 0}
        #: Batches whose last layer ran at the last token only ("trimmed") or whole ("whole").
        self.last_layer_stats: dict[str, int] = {"trimmed": 0, "whole": 0}

    # ----------------------------------------------------------------- forward passes
    def forward(self, network: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits of :attr:`token_ids` at each row's last real token, in float32."""
        ids, mask = tensors["input_ids"], tensors["attention_mask"]
        if self.mode == "full":
            return self._full(network, ids, mask)
        types = tensors.get("token_type_ids")
        if self.mode == "last" or types is None or not _full_attention_only(network.config):
            return self._head(network, self._last_hidden(network, ids, mask))
        return self._with_prefixes(network, ids, mask, types)

    def _full(self, network: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch

        logits = network(input_ids=ids, attention_mask=mask).logits
        last = mask.sum(dim=1) - 1
        rows = logits[torch.arange(ids.shape[0], device=ids.device), last]
        return rows[:, self.token_ids].float()

    def _last_hidden(self, network: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(dim=1)

        def run(index: torch.Tensor, width: int) -> torch.Tensor:
            rows_ids, rows_mask = ids[index, :width], mask[index, :width]
            last = lengths[index] - 1
            return self._hidden_at(network, last, input_ids=rows_ids, attention_mask=rows_mask)

        return self._by_length(lengths, run)

    def _by_length(self, lengths: torch.Tensor, run: Any) -> torch.Tensor:
        """``run(rows, width)`` over groups of rows of similar ``lengths`` (each cut to its
        longest row: :func:`length_groups`), the results put back in row order."""
        import torch

        sizes = lengths.tolist()
        groups = (
            length_groups(sizes, self.group_cost) if self.split_padding else [range(len(sizes))]
        )
        out: torch.Tensor | None = None
        for group in groups:
            index = torch.tensor(list(group), device=lengths.device)
            hidden = run(index, max(sizes[i] for i in group))
            if out is None:
                out = hidden.new_empty((len(sizes), hidden.shape[-1]))
            out[index] = hidden
        assert out is not None
        return out

    def _hidden_at(self, network: Any, last: torch.Tensor, **inputs: Any) -> torch.Tensor:
        """The base model's final hidden state of each row at ``last[row]``."""
        import torch

        base = _base(network)
        if self.trim_last_layer:
            return last_token_hidden(network, base, last, self.last_layer_stats, **inputs)
        hidden = base(**inputs).last_hidden_state
        return hidden[torch.arange(last.shape[0], device=last.device), last]

    def _head(self, network: Any, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden @ W[token_ids].T``: the LM head's rows the score reads, nothing else."""
        import torch

        head = network.get_output_embeddings()
        logits = hidden @ head.weight[self.token_ids].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[self.token_ids]
        cap = getattr(network.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits.float()

    def _with_prefixes(
        self, network: Any, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor
    ) -> torch.Tensor:
        import torch

        # Each row's shared prefix ends at its first type-1 token (every row has one: the
        # answer cue after the passage).
        shared = (types == 1).int().argmax(dim=1).tolist()
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, length in enumerate(shared):
            groups.setdefault(tuple(ids[row, :length].tolist()), []).append(row)
        out = torch.empty((ids.shape[0], len(self.token_ids)), dtype=torch.float32)
        out = out.to(ids.device)
        for prefix, rows in groups.items():
            index = torch.tensor(rows, device=ids.device)
            if not prefix:
                hidden = self._last_hidden(network, ids[index], mask[index])
            else:
                hidden = self._after_prefix(network, prefix, ids[index], mask[index])
            out[index] = self._head(network, hidden)
        return out

    def _after_prefix(
        self, network: Any, prefix: tuple[int, ...], ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Last hidden states of rows that all start with ``prefix``, the prefix run once."""
        import torch
        from transformers import DynamicCache

        start = len(prefix)
        layers = self._prefix_cache(network, prefix, ids.device)
        lengths = mask[:, start:].sum(dim=1)

        def run(index: torch.Tensor, width: int) -> torch.Tensor:
            n = index.shape[0]
            suffix = ids[index, start : start + width]
            suffix_mask = mask[index, start : start + width]
            cache = DynamicCache(
                ddp_cache_data=[
                    (k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in layers
                ],
                config=network.config,
            )
            ones = torch.ones((n, start), dtype=mask.dtype, device=mask.device)
            positions = torch.arange(start, start + width, device=ids.device).expand(n, width)
            return self._hidden_at(
                network,
                lengths[index] - 1,
                input_ids=suffix,
                attention_mask=torch.cat([ones, suffix_mask], dim=1),
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )

        return self._by_length(lengths, run)

    def _prefix_cache(self, network: Any, prefix: tuple[int, ...], device: Any) -> list:
        """The key/value tensors of ``prefix`` (batch 1), from the kept ones or computed now."""
        import torch

        key = (id(network), _weights_version(network), prefix)
        layers = self._prefixes.get(key)
        if layers is not None:
            self._prefixes.move_to_end(key)
            self.prefix_stats["reused"] += 1
            return layers
        ids = torch.tensor([prefix], device=device)
        cache = _base(network)(input_ids=ids, use_cache=True).past_key_values
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        self.prefix_stats["computed"] += 1
        self._prefixes[key] = layers
        while len(self._prefixes) > self.max_prefixes:
            self._prefixes.popitem(last=False)
        return layers

    def clear(self) -> None:
        """Forget the kept prefix caches."""
        self._prefixes.clear()


def _base(network: Any) -> Any:
    """The decoder under the LM head (``model.model`` for Gemma, Qwen, Llama)."""
    base = getattr(network, getattr(network, "base_model_prefix", "model"), None)
    return base if base is not None else network.get_decoder()


def _weights_version(network: Any) -> int:
    """A number that changes when the weights are updated in place (an optimizer step)."""
    return sum(int(p._version) for p in network.parameters())
