"""What the two families with one relevance head per layer share: ``"bge-layerwise"``
(:mod:`.causal_layerwise`, a MiniCPM body) and ``"bge-lightweight"`` (:mod:`.causal_lightweight`,
a Gemma2 body).

Both read FlagEmbedding's layer-wise config (``start_layer``, plain rotary positions), load our
own network from the folder's weights refusing any left random, and score one chosen layer
(``cutoff_layer``) at the last token. The family modules keep what differs (their config
checks, encoders and runner options); the networks (:mod:`.minicpm_layerwise`,
:mod:`.gemma2_lightweight`) share :class:`TopLayerForward`.

This module imports neither torch nor ``transformers`` at import time, so that
:mod:`.families` stays torch-free.

>>> from types import SimpleNamespace
>>> rope_settings(SimpleNamespace(rope_parameters={"rope_type": "default", "rope_theta": 1e4}))
('default', 10000.0)
>>> checked_cutoff_layer(8, range(8, 41), "m")
8
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from .causal_family import load_refusing_missing
from .float32_rescue import RescuingRunner

if TYPE_CHECKING:
    import torch

__all__ = [
    "CutoffLayerRunner",
    "TopLayerForward",
    "check_head_reranker",
    "check_plain_rope",
    "checked_cutoff_layer",
    "load_head_network",
    "rope_settings",
]


def rope_settings(config: Any) -> tuple[str, float]:
    """The config's rotary type and base, from ``transformers`` 5's ``rope_parameters`` (which
    also stands for a ``rope_scaling: null`` config.json) or the older ``rope_scaling`` and
    ``rope_theta`` attributes.

    >>> from types import SimpleNamespace
    >>> rope_settings(SimpleNamespace(rope_parameters={"rope_type": "default", "rope_theta": 1e4}))
    ('default', 10000.0)
    >>> rope_settings(SimpleNamespace(rope_scaling={"type": "linear", "factor": 2.0}))
    ('linear', 10000.0)
    """
    params = getattr(config, "rope_parameters", None)
    if params is None:
        params = getattr(config, "rope_scaling", None)
    params = params if isinstance(params, dict) else {}
    kind = params.get("type") or params.get("rope_type") or "default"
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    return str(kind), float(theta if theta is not None else 10000.0)


def check_head_reranker(
    config: Any, model_name: str, *, detected: bool, kind: str, architecture: str
) -> None:
    """Refuse a config its family's ``detect`` did not recognise (``detected``) or without a
    ``start_layer``; ``kind`` names the family's reranker ("layer-wise", "lightweight") and
    ``architecture`` the class its config should name."""
    if not detected or getattr(config, "start_layer", None) is None:
        raise ValueError(
            f"model={model_name!r} is not a BGE {kind} reranker (its config names "
            f"{getattr(config, 'architectures', None)}, not {architecture} with a start_layer); "
            "use family='auto', or 'bge-decoder-only' for a causal LM read at its 'Yes' logit."
        )


def check_plain_rope(config: Any, model_name: str, family: str, checkpoint: str) -> None:
    """Refuse a rotary scaling: our networks compute plain rotary positions only. ``family``
    and ``checkpoint`` (what the BAAI checkpoint has) complete the message."""
    kind = rope_settings(config)[0]
    if kind != "default":
        raise ValueError(
            f"model={model_name!r} uses rope_scaling of type {kind!r}; the {family} family "
            f"runs plain rotary positions ({checkpoint})."
        )


def load_head_network(network_class: Any, loaded: Any, dtype: Any, kind: str) -> Any:
    """``network_class`` (our own network) from the loaded model's folder in ``dtype``, read
    with the checkpoint's config; refuses unreadable weights and weights left random, a head or
    a layer missing from the checkpoint (:func:`~.causal_family.load_refusing_missing`).
    ``kind`` names the reranker ("layer-wise", "lightweight")."""
    options = {
        # A copy: loading records its dtype and attention settings on the config it is given.
        "config": copy.deepcopy(loaded.config),
        "dtype": dtype,
        "revision": loaded.load_options.get("revision"),
    }
    return load_refusing_missing(network_class, loaded, f"{kind} reranker", options)


def checked_cutoff_layer(layer: Any, layers: range, model_name: str) -> int:
    """``layer`` if it is one of ``layers`` (those with a score head), else a ValueError."""
    if isinstance(layer, bool) or not isinstance(layer, int) or layer not in layers:
        step = f" in steps of {layers.step}" if layers.step != 1 else ""
        raise ValueError(
            f"cutoff_layer must be one layer from {layers.start} to {layers.stop - 1}{step} "
            f"(the layers of {model_name!r} that have a score head), got {layer!r}"
        )
    return layer


class CutoffLayerRunner(RescuingRunner):
    """A runner reading one layer, :attr:`cutoff_layer`, checked against :attr:`layers` (the
    layers with a head), which a subclass sets before the cutoff layer."""

    layers: range

    @property
    def cutoff_layer(self) -> int:
        """The layer whose hidden state gives the score (FlagEmbedding's ``cutoff_layers=[n]``)."""
        return self._cutoff_layer

    @cutoff_layer.setter
    def cutoff_layer(self, layer: int) -> None:
        self._cutoff_layer = checked_cutoff_layer(layer, self.layers, self.loaded.name)


class TopLayerForward:
    """A network's ``forward``: the top layer's :meth:`score`, as ``logits`` (rows, 1), for
    callers that expect a sequence classifier; ``token_type_ids`` is ignored. Listed before
    ``PreTrainedModel`` among the bases; the subclass defines ``score(input_ids,
    attention_mask, layer)``, (rows,) float32 logits. No class annotations here: transformers
    reads a ``config`` annotation as the model's config class."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.score(input_ids, attention_mask, self.config.num_hidden_layers)[:, None]
        return SequenceClassifierOutput(logits=logits)

    def get_output_embeddings(self) -> None:
        """None: the heads score relevance; none of them is a vocabulary projection to tie."""
        return None
