"""The ``"bge-lightweight"`` family: ``BAAI/bge-reranker-v2.5-gemma2-lightweight``.

FlagEmbedding's ``LightWeightFlagLLMReranker`` layout: the tokens of ``bge-decoder-only``
(``<bos>A: {query}\\nB: {passage}\\n{prompt}``, :class:`~.causal_prompts.BgeDecoderEncoder`)
with its own default prompt (:data:`LIGHTWEIGHT_DEFAULT_PROMPT`), a Gemma2 decoder
(:class:`~.gemma2_lightweight.LightweightGemma2`, our own code; the folder's ``gemma_model.py``
is never run) and one relevance head per layer from ``start_layer`` (8) to the top (42). The
score is read at the last token of one layer, after an optional token compression of the
passage. FlagEmbedding's three options are attributes of :class:`LightweightRunner`, with its
defaults:

- ``cutoff_layer`` (FlagEmbedding's ``cutoff_layers=[n]``): the layer read; ``None``, the top
  layer (BAAI's model card suggests 28);
- ``compress_ratio``: passage tokens merged into one, ``1`` (no compression); FlagEmbedding
  documents 1, 2, 4 and 8;
- ``compress_layers``: the layers before which the passage is compressed, ``(8,)`` (the card
  suggests ``(24, 40)`` with ratio 2).

The folder's ``config.json`` names a remote config class (``auto_map``, ``model_type
"cost_wise_gemma"``), so the model needs ``trust_remote_code=True`` for its config, as the
layer-wise family does (FlagEmbedding imports the class from its own package instead).

>>> from transformers import PretrainedConfig
>>> config = PretrainedConfig(architectures=["CostWiseGemmaForCausalLM"])
>>> detect_lightweight("/m/bge-reranker-v2.5-gemma2-lightweight", config)
True
>>> detect_lightweight("/m/gemma", PretrainedConfig(architectures=["Gemma2ForCausalLM"]))
False
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .causal_family import prompt_encoder, require_torch
from .causal_prompts import BgeDecoderEncoder
from .layer_heads import CutoffLayerRunner, check_head_reranker, check_plain_rope, load_head_network

if TYPE_CHECKING:
    import torch

__all__ = [
    "LIGHTWEIGHT_DEFAULT_PROMPT",
    "LightweightEncoder",
    "LightweightRunner",
    "check_lightweight_config",
    "detect_lightweight",
    "lightweight_encoder",
    "lightweight_runner",
    "load_lightweight",
]

#: FlagEmbedding's default prompt for the lightweight reranker (not bge-reranker-v2-gemma's).
LIGHTWEIGHT_DEFAULT_PROMPT = "Predict whether passage B contains an answer to query A."

_ARCHITECTURE = "CostWiseGemmaForCausalLM"
_CONFIG_CLASS = "CostWiseGemmaConfig"
_MODEL_TYPE = "cost_wise_gemma"
_NAME = "gemma2-lightweight"
#: The token type of the separator and prompt after the passage (0: before it, 1: the passage).
PROMPT_TYPE = 2


def detect_lightweight(source: str, config: Any) -> bool:
    """Whether ``family="auto"`` reads this model as a BGE lightweight reranker: its config
    names FlagEmbedding's ``CostWiseGemma`` classes, or the model's name says so and its config
    is a layer-wise one."""
    architectures = getattr(config, "architectures", None) or ()
    return (
        _ARCHITECTURE in architectures
        or type(config).__name__ == _CONFIG_CLASS
        or getattr(config, "model_type", None) == _MODEL_TYPE
        or (_NAME in source.lower() and bool(getattr(config, "layer_wise", False)))
    )


def check_lightweight_config(config: Any, model_name: str) -> None:
    """Refuse a config this family cannot score, naming what is wrong."""
    check_head_reranker(
        config,
        model_name,
        detected=detect_lightweight(model_name, config),
        kind="lightweight",
        architecture=_ARCHITECTURE,
    )
    if not getattr(config, "layer_wise", False):
        raise ValueError(
            f"model={model_name!r} has layer_wise={getattr(config, 'layer_wise', None)!r}: only "
            "the layer-wise layout (one relevance head per layer, as in "
            "BAAI/bge-reranker-v2.5-gemma2-lightweight) gives a score; a vocabulary lm_head "
            "does not."
        )
    missing = [
        k for k in ("query_pre_attn_scalar", "head_dim", "layer_sep") if not hasattr(config, k)
    ]
    if missing:
        raise ValueError(
            f"model={model_name!r}: its config lacks the Gemma2 setting(s) {missing}; load it "
            "with trust_remote_code=True so its CostWiseGemmaConfig (a Gemma2Config) is read."
        )
    check_plain_rope(config, model_name, "lightweight", "as the BAAI checkpoint has")


def load_lightweight(loaded: Any, dtype: Any) -> Any:
    """The :class:`~.gemma2_lightweight.LightweightGemma2` network in ``dtype``; refuses weights
    left random (a head or a layer missing from the checkpoint)."""
    from .gemma2_lightweight import LightweightGemma2

    check_lightweight_config(loaded.config, loaded.name)
    return load_head_network(LightweightGemma2, loaded, dtype, "lightweight")


class LightweightEncoder(BgeDecoderEncoder):
    """:class:`~.causal_prompts.BgeDecoderEncoder` with the lightweight default prompt, whose
    ``token_type_ids`` also mark the separator and prompt after the passage (:data:`PROMPT_TYPE`):
    the runner reads FlagEmbedding's ``query_lengths`` (type 0) and ``prompt_lengths`` (type 2)
    from them."""

    def __init__(self, tokenizer: Any, lock: Any, **options: Any) -> None:
        super().__init__(tokenizer, lock, **options)
        if self.instruction is None:
            self.prompt_ids = self._ids([LIGHTWEIGHT_DEFAULT_PROMPT])[0]

    def encode(self, items: list[tuple[str, str]]) -> dict[str, Any]:
        """As :meth:`BgeDecoderEncoder.encode`, the tail after the passage typed 2."""
        encoded = super().encode(items)
        tail = len(self.sep_ids) + len(self.prompt_ids)
        encoded["token_type_ids"] = [
            types[: len(types) - tail] + [PROMPT_TYPE] * tail for types in encoded["token_type_ids"]
        ]
        return encoded


class LightweightRunner(CutoffLayerRunner):
    """Runs padded batches of a lightweight reranker: the logit of :attr:`cutoff_layer` at each
    row's last real token, after the passage compression, as a (rows, 1) float32 tensor.

    Args:
        loaded: the :class:`~bge_rerank_plugins.runtime.loading.LoadedModel`.
        cutoff_layer: the layer read (``None``: the top layer, FlagEmbedding's default).
        compress_ratio: passage tokens merged into one (``1``: none, FlagEmbedding's default).
        compress_layers: the layers before which the passage is compressed (``None``:
            FlagEmbedding's ``[8]``, dropped on a model with 8 layers or fewer).
    """

    def __init__(
        self,
        loaded: Any,
        cutoff_layer: int | None = None,
        compress_ratio: int = 1,
        compress_layers: Iterable[int] | None = None,
    ) -> None:
        super().__init__(loaded)
        from .gemma2_lightweight import head_layers

        self.layers = head_layers(loaded.config)
        self.top = int(loaded.config.num_hidden_layers)
        self.cutoff_layer = self.top if cutoff_layer is None else cutoff_layer
        self.compress_ratio = compress_ratio
        # FlagEmbedding's default names layer 8, a no-op on a model without one.
        default = (8,) if self.top > 8 else ()
        self.compress_layers = default if compress_layers is None else compress_layers

    @property
    def compress_ratio(self) -> int:
        """How many passage tokens become one at each of :attr:`compress_layers` (1: none)."""
        return self._compress_ratio

    @compress_ratio.setter
    def compress_ratio(self, ratio: int) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
            raise ValueError(
                f"compress_ratio must be an int >= 1 (1: no compression; FlagEmbedding "
                f"documents 1, 2, 4 and 8), got {ratio!r}"
            )
        self._compress_ratio = ratio

    @property
    def compress_layers(self) -> tuple[int, ...]:
        """The layers before which the passage is compressed (only those below the cutoff
        layer act)."""
        return self._compress_layers

    @compress_layers.setter
    def compress_layers(self, layers: Iterable[int]) -> None:
        values = [layers] if isinstance(layers, int) else list(layers)
        wrong = [
            k
            for k in values
            if isinstance(k, bool) or not isinstance(k, int) or not 0 < k < self.top
        ]
        if wrong:
            raise ValueError(
                f"compress_layers must be layers from 1 to {self.top - 1} (the passage is "
                f"compressed before each; layer 0 never is), got {layers!r}"
            )
        self._compress_layers = tuple(sorted(set(values)))

    def forward(self, network: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The cutoff layer's logit at each row's last real token, (rows, 1) float32."""
        ids, mask = tensors["input_ids"], tensors["attention_mask"]
        types = tensors.get("token_type_ids")
        lengths: dict[str, Any] = {}
        if types is not None:
            real = mask.bool()
            lengths = {
                "query_lengths": ((types == 0) & real).sum(dim=1),
                "prompt_lengths": ((types == PROMPT_TYPE) & real).sum(dim=1),
            }
        elif self.compress_ratio > 1:
            raise ValueError(
                "compress_ratio > 1 needs the token_type_ids of LightweightEncoder (they mark "
                "the query, the passage and the prompt); encode the pairs with the scorer's "
                "encoder"
            )
        logits = network.score(
            ids,
            mask,
            self.cutoff_layer,
            compress_ratio=self.compress_ratio,
            compress_layers=self.compress_layers,
            **lengths,
        )
        return logits[:, None]


def lightweight_encoder(loaded: Any, config: Any) -> LightweightEncoder:
    """FlagEmbedding's lightweight prompt and truncation for a scorer's ``config``."""
    return prompt_encoder(LightweightEncoder, loaded, config)


def lightweight_runner(
    loaded: Any,
    backend: str,
    *,
    cutoff_layer: int | None = None,
    compress_ratio: int = 1,
    compress_layers: Iterable[int] | None = None,
) -> LightweightRunner:
    """The :class:`LightweightRunner` (torch backend only); ``cutoff_layer`` is ScorerConfig's
    option (passed by :func:`~.families.build_runner`), ``None`` its defaults: the top layer,
    no compression, FlagEmbedding's compression layers."""
    require_torch(backend, "lightweight rerankers", "bge-lightweight")
    return LightweightRunner(loaded, cutoff_layer, compress_ratio, compress_layers)
