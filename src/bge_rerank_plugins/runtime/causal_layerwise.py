"""The ``"bge-layerwise"`` family: ``BAAI/bge-reranker-v2-minicpm-layerwise``.

FlagEmbedding's ``LayerWiseFlagLLMReranker`` layout: the prompt of ``bge-decoder-only``
(``<bos>A: {query}\\nB: {passage}\\n{prompt}``, :class:`~.causal_prompts.BgeDecoderEncoder`), a
MiniCPM decoder, and one relevance head per layer from ``start_layer`` (8) to the top (40); the
score is the head of the chosen layer at the last token. FlagEmbedding's ``cutoff_layers``
default (``None``) is the top layer; BAAI's model card suggests 28 for speed. Here the layer is
the scorer's ``cutoff_layer`` option (``CrossEncoderScorer(model, cutoff_layer=28)``, read as
:attr:`LayerwiseRunner.cutoff_layer`), one layer per scorer: the scorer returns one score per
pair, where FlagEmbedding returns one list per layer.

The network is :class:`~.minicpm_layerwise.LayerwiseMiniCPM` (our own code; the folder's
``modeling_minicpm_reranker.py`` is never run). The folder's ``config.json`` names a remote config
class (``auto_map``) and ``transformers`` has no MiniCPM of its own, so the model needs
``trust_remote_code=True`` for its config, as it does in FlagEmbedding.

>>> from transformers import PretrainedConfig
>>> config = PretrainedConfig(architectures=["LayerWiseMiniCPMForCausalLM"])
>>> detect_layerwise("/m/bge-reranker-v2-minicpm-layerwise", config)
True
>>> detect_layerwise("/m/gemma", PretrainedConfig(architectures=["GemmaForCausalLM"]))
False
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .causal_family import causal_encoder, require_torch
from .layer_heads import CutoffLayerRunner, check_head_reranker, check_plain_rope, load_head_network

if TYPE_CHECKING:
    import torch

__all__ = [
    "LayerwiseRunner",
    "check_layerwise_config",
    "detect_layerwise",
    "layerwise_encoder",
    "layerwise_runner",
    "load_layerwise",
]


_ARCHITECTURE = "LayerWiseMiniCPMForCausalLM"
_CONFIG_CLASS = "LayerWiseMiniCPMConfig"


def detect_layerwise(source: str, config: Any) -> bool:
    """Whether ``family="auto"`` reads this model as a BGE layer-wise reranker: its config
    names FlagEmbedding's layer-wise MiniCPM class."""
    architectures = getattr(config, "architectures", None) or ()
    return _ARCHITECTURE in architectures or type(config).__name__ == _CONFIG_CLASS


def check_layerwise_config(config: Any, model_name: str) -> None:
    """Refuse a config this family cannot score, naming what is wrong."""
    check_head_reranker(
        config,
        model_name,
        detected=detect_layerwise("", config),
        kind="layer-wise",
        architecture=_ARCHITECTURE,
    )
    head_type = getattr(config, "head_type", "simple")
    if head_type != "simple":
        raise ValueError(
            f"model={model_name!r} has head_type={head_type!r}: only the 'simple' heads (one "
            "relevance logit per layer, as in BAAI/bge-reranker-v2-minicpm-layerwise) give a "
            "score. A 'raw' or 'complex' head is a training-time layout; export the reranker "
            "with FlagEmbedding's layer-wise fine-tuning first."
        )
    check_plain_rope(
        config, model_name, "layer-wise", "rope_scaling: null, as the BAAI checkpoint has"
    )


def layer_range(config: Any) -> range:
    """The layers that have a head: ``start_layer`` to ``num_hidden_layers``."""
    return range(int(getattr(config, "start_layer", 0)), int(config.num_hidden_layers) + 1)


def load_layerwise(loaded: Any, dtype: Any) -> Any:
    """The :class:`~.minicpm_layerwise.LayerwiseMiniCPM` network in ``dtype``; refuses weights
    left random (a head or a layer missing from the checkpoint)."""
    from .minicpm_layerwise import LayerwiseMiniCPM

    check_layerwise_config(loaded.config, loaded.name)
    return load_head_network(LayerwiseMiniCPM, loaded, dtype, "layer-wise")


class LayerwiseRunner(CutoffLayerRunner):
    """Runs padded batches of a layer-wise reranker: the logit of :attr:`cutoff_layer`'s head
    at each row's last real token, as a (rows, 1) float32 tensor.

    Args:
        loaded: the :class:`~bge_rerank_plugins.runtime.loading.LoadedModel`.
        cutoff_layer: the layer read (``None``: the top layer, FlagEmbedding's default); one of
            ``start_layer`` to ``num_hidden_layers`` of the config.
    """

    def __init__(self, loaded: Any, cutoff_layer: int | None = None) -> None:
        super().__init__(loaded)
        self.layers = layer_range(loaded.config)
        self.cutoff_layer = self.layers[-1] if cutoff_layer is None else cutoff_layer

    def forward(self, network: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The cutoff layer's logit at each row's last real token, (rows, 1) float32."""
        ids, mask = tensors["input_ids"], tensors["attention_mask"]
        return network.score(ids, mask, self.cutoff_layer)[:, None]


def layerwise_encoder(loaded: Any, config: Any) -> Any:
    """FlagEmbedding's decoder-only prompt and truncation (the same as ``bge-decoder-only``)."""
    return causal_encoder("bge-decoder-only", loaded, config)


def layerwise_runner(
    loaded: Any, backend: str, *, cutoff_layer: int | None = None
) -> LayerwiseRunner:
    """The :class:`LayerwiseRunner` reading ``cutoff_layer`` (ScorerConfig's option;
    ``None``: the top layer), torch backend only."""
    require_torch(backend, "layer-wise rerankers", "bge-layerwise")
    return LayerwiseRunner(loaded, cutoff_layer)
