"""The ``"st-modular"`` family: a sentence-transformers modular cross-encoder as one torch network.

:func:`load_st_modular` reads the layout (:mod:`.st_layout`), loads the ``Transformer`` body with
``transformers.AutoModel`` and builds each later module (Pooling, Dense, LayerNorm, Normalize,
Dropout) from its saved config and weights. The network's ``forward`` takes the padded batch the
scorer makes and returns an object with ``.logits`` (the ``scores`` entry, one or two columns),
as a ``transformers`` classifier does, so every backend runs it unchanged: ``torch`` (any device
and dtype, with the float32 rescue), ``onnx`` (exported like any classifier) and ``torch-int8``
(the body's ``Linear`` layers; the head stays float32).

What it computes is what ``sentence_transformers.CrossEncoder.predict`` computes before its
activation function: the same body output, pooling, layers and order. The modules after the
body run in float32 whatever the body's dtype (they are a few small layers; float32 keeps the
returned number exact), as sentence-transformers itself accumulates its pooling in float32.

Scores: ``normalize=False`` gives this raw score, equal to ``predict(pairs,
activation_fn=torch.nn.Identity())``; ``normalize=True`` its sigmoid, as for every family,
equal to ``predict(pairs)`` when the model's saved ``activation_fn`` is sigmoid (the default
sentence-transformers saves for a one-output cross-encoder).

>>> from bge_rerank_plugins import CrossEncoderScorer
>>> scorer = CrossEncoderScorer("./ettin-reranker")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
from torch import nn

from ..errors import ModelFilesError, RandomHeadError, RerankerError
from .heads import new_weight_names
from .st_layout import Stage, StLayout, read_layout

__all__ = ["ModularCrossEncoder", "Pooling", "build_stage", "load_st_modular"]

logger = logging.getLogger(__name__)

_SIGMOID_NAMES = {"torch.nn.modules.activation.Sigmoid", "torch.nn.Sigmoid"}
#: Weights a body may lack without changing its last hidden state (BERT's unused pooler).
_UNUSED_BODY_WEIGHTS = ("pooler.",)


class Pooling(nn.Module):
    """sentence-transformers' ``Pooling`` over the padded token embeddings (either padding side).

    >>> pool = Pooling(("cls", "mean"))
    >>> pool(torch.ones(1, 3, 2), torch.tensor([[1, 1, 0]])).shape
    torch.Size([1, 4])
    """

    def __init__(self, modes: tuple[str, ...]) -> None:
        super().__init__()
        self.modes = tuple(modes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        width = tokens.shape[-1]
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        counts = torch.clamp(weights.sum(dim=1), min=1e-9)
        out = []
        for mode in self.modes:
            if mode == "cls":  # the first real token
                first = mask.to(torch.int32).argmax(dim=1)
                out.append(torch.gather(tokens, 1, first.view(-1, 1, 1).expand(-1, 1, width))[:, 0])
            elif mode == "max":
                out.append(tokens.masked_fill(weights == 0, float("-inf")).max(dim=1).values)
            elif mode == "mean":
                out.append((tokens * weights).sum(dim=1) / counts)
            elif mode == "mean_sqrt_len_tokens":
                out.append((tokens * weights).sum(dim=1) / torch.sqrt(counts))
            elif mode == "weightedmean":  # position weights from the first real token
                steps = torch.arange(
                    1, tokens.shape[1] + 1, device=tokens.device, dtype=tokens.dtype
                )
                left_pad = mask.to(torch.int32).argmax(dim=1).to(tokens.dtype)
                ramp = weights * (steps.view(1, -1, 1) - left_pad.view(-1, 1, 1))
                out.append((tokens * ramp).sum(dim=1) / torch.clamp(ramp.sum(dim=1), min=1e-9))
            elif mode == "lasttoken":
                length = tokens.shape[1]
                found, back = mask.flip(1).max(dim=1)
                back = torch.where(found == 0, length - 1, back)
                last = (length - back - 1).view(-1, 1, 1).expand(-1, 1, width)
                out.append(torch.gather(tokens * weights, 1, last)[:, 0])
            else:  # read_layout refuses these first
                raise RerankerError(f"unsupported pooling mode {mode!r}")
        return torch.cat(out, dim=-1)


class _Dense(nn.Module):
    def __init__(self, config: dict[str, Any], activation: nn.Module) -> None:
        super().__init__()
        self.source = config.get("module_input_name", "sentence_embedding")
        self.target = config.get("module_output_name") or self.source
        self.in_features, self.out_features = (
            int(config["in_features"]),
            int(config["out_features"]),
        )
        self.linear = nn.Linear(self.in_features, self.out_features, bias=config.get("bias", True))
        self.activation = activation
        self.use_residual = bool(config.get("use_residual", False))
        if self.use_residual and self.in_features != self.out_features:
            self.residual = nn.Linear(self.in_features, self.out_features, bias=False)

    def forward(self, features: dict[str, torch.Tensor]) -> None:
        x = features[self.source]
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (x if self.in_features == self.out_features else self.residual(x))
        features[self.target] = out


class _LayerNorm(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(int(config["dimension"]))

    def forward(self, features: dict[str, torch.Tensor]) -> None:
        features["sentence_embedding"] = self.norm(features["sentence_embedding"])


class _Normalize(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.source = config.get("module_input_name", "sentence_embedding")
        self.target = config.get("module_output_name") or self.source

    def forward(self, features: dict[str, torch.Tensor]) -> None:
        if self.source in features:
            features[self.target] = nn.functional.normalize(features[self.source], p=2, dim=-1)


class _PoolingStage(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.pool = Pooling(config["pooling_mode"])

    def forward(self, features: dict[str, torch.Tensor]) -> None:
        features["sentence_embedding"] = self.pool(
            features["token_embeddings"], features["attention_mask"]
        )


class _Dropout(nn.Module):  # identity at inference
    def forward(self, features: dict[str, torch.Tensor]) -> None:
        return None


def _activation(path: str | None, label: str, name: str) -> nn.Module:
    """The activation a ``Dense`` saved by its dotted class path (``None``: Tanh, ST's default)."""
    path = path or "torch.nn.modules.activation.Tanh"
    module_name, _, class_name = path.rpartition(".")
    activation = None
    if path.startswith("torch."):
        try:
            activation = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            activation = None
    if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise RerankerError(
            f"model={name!r}: {label} uses the activation function {path!r}, which is not a "
            "torch.nn module class; this scorer runs no custom code from a model folder. "
            "Score it with sentence_transformers.CrossEncoder(..., trust_remote_code=True)."
        )
    return activation()


def _read_weights(stage: Stage) -> dict[str, torch.Tensor]:
    path = str(stage.weights)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def build_stage(stage: Stage, name: str) -> nn.Module:
    """The torch module for one saved module, its weights loaded; never a random one."""
    label = f"module {stage.path} ({stage.kind})"
    if stage.kind == "Pooling":
        return _PoolingStage(stage.config)
    if stage.kind == "Normalize":
        return _Normalize(stage.config)
    if stage.kind == "Dropout":
        return _Dropout()
    try:
        if stage.kind == "Dense":
            module = _Dense(
                stage.config, _activation(stage.config.get("activation_function"), label, name)
            )
        else:
            module = _LayerNorm(stage.config)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFilesError(
            f"model={name!r}: the config.json of {label} is incomplete ({error!r})."
        ) from error
    try:
        state = _read_weights(stage)
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of another shape than the config says
        raise RandomHeadError(
            f"model={name!r}: the weights of {label} do not fit its config.json "
            f"({' '.join(str(error).split())[:300]}); they would not be the trained ones."
        ) from error
    except Exception as error:
        raise ModelFilesError(
            f"model={name!r}: could not read the weights of {label} from {stage.weights} "
            f"({type(error).__name__}: {error}); copy that file again."
        ) from error
    if result.missing_keys or result.unexpected_keys:
        raise RandomHeadError(
            f"model={name!r}: {stage.weights} lacks the weights {sorted(result.missing_keys)} "
            f"of {label} (it holds {sorted(state)}); loading it would initialise them at random, "
            "so every score would be noise."
        )
    return module.float()


class ModularCrossEncoder(nn.Module):
    """A ``transformers`` body followed by the cross-encoder's saved modules.

    ``forward`` returns a ``SequenceClassifierOutput`` whose ``logits`` are the ``scores``
    (float32, shaped ``(batch, outputs)``).
    """

    def __init__(self, body: nn.Module, stages: list[nn.Module]) -> None:
        super().__init__()
        self.body = body
        self.stages = nn.ModuleList(stages)

    @property
    def base_model(self) -> nn.Module:
        """The body (what ``backend="torch-int8"`` quantizes)."""
        return self.body

    @property
    def config(self) -> Any:
        """The body's ``transformers`` config."""
        return self.body.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.body(**inputs, return_dict=True).last_hidden_state
        features = {"token_embeddings": hidden.float(), "attention_mask": attention_mask}
        for stage in self.stages:
            stage(features)
        return SequenceClassifierOutput(logits=features["scores"])


def _outputs(layout: StLayout, name: str) -> None:
    last = [s for s in layout.stages if s.config.get("module_output_name") == "scores"][-1]
    count = int(last.config.get("out_features", 0))
    if count not in (1, 2):
        raise ValueError(
            f"model={name!r} has {count} outputs (its module {last.path}); a reranker needs 1 "
            "(a relevance logit) or 2 (not relevant / relevant)."
        )


def load_st_modular(loaded: Any, dtype: Any) -> ModularCrossEncoder:
    """The network of the modular cross-encoder ``loaded`` describes, body in ``dtype``.

    ``loaded`` is a :class:`~bge_rerank_plugins.runtime.loading.LoadedModel` (its ``source``,
    ``name`` and ``load_options``). Raises :class:`RandomHeadError` for any weight the folder
    lacks, :class:`~bge_rerank_plugins.errors.RerankerError` for a layout it cannot run.
    """
    from pathlib import Path

    from transformers import AutoModel

    options = dict(loaded.load_options)
    layout = read_layout(loaded.source, loaded.name, options.get("revision"))
    _outputs(layout, loaded.name)
    try:
        body, info = AutoModel.from_pretrained(
            loaded.source, dtype=dtype, output_loading_info=True, **options
        )
    except torch.OutOfMemoryError:
        raise
    except Exception as error:
        if isinstance(error, (RerankerError, ImportError)):
            raise
        if isinstance(error, OSError) and not Path(loaded.source).is_dir():
            raise
        raise ModelFilesError(
            f"model={loaded.name!r}: could not load the Transformer body of {loaded.source} "
            f"({type(error).__name__}: {' '.join(str(error).split())[:300]}). Its weights file "
            "(model.safetensors) is missing, truncated or corrupt: fetch it again."
        ) from error
    missing = sorted(n for n in new_weight_names(info) if not n.startswith(_UNUSED_BODY_WEIGHTS))
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise RandomHeadError(
            f"model={loaded.name!r}: {len(missing)} weight(s) of the Transformer body are not in "
            f"{loaded.source} ({shown}); loading it would initialise them at random, so every "
            "score would be noise. Copy model.safetensors again from where the model came from."
        )
    stages = [build_stage(stage, loaded.name) for stage in layout.stages]
    if layout.activation_fn and layout.activation_fn not in _SIGMOID_NAMES:
        logger.info(
            "%s was saved with activation_fn=%s; normalize=True returns the sigmoid of the raw "
            "score as for every model, normalize=False the raw score.",
            loaded.name,
            layout.activation_fn,
        )
    return ModularCrossEncoder(body, stages).eval()
