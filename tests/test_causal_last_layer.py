"""The last decoder layer at the last token only (:mod:`~bge_rerank_plugins.runtime.backends.
causal_last_layer`): the same logits as the whole causal-LM forward, for every layer type it
knows, with padding, a prefix cache, sliding windows and both attention implementations; and the
checked fallback (the layer whole) for what it does not know.

The models are tiny random causal LMs built from their configs here (no tokenizer: random ids).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bge_rerank_plugins.runtime.backends.causal import CausalRunner
from bge_rerank_plugins.runtime.backends.causal_last_layer import last_layer_layout

SMALL = {
    "vocab_size": 97,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 256,
    "initializer_range": 0.2,
    "pad_token_id": 0,
}


def _model(kind: str, attention: str = "sdpa", **extra) -> torch.nn.Module:
    import transformers

    names = {
        "llama": "Llama",
        "mistral": "Mistral",
        "qwen2": "Qwen2",
        "qwen3": "Qwen3",
        "gemma": "Gemma",
        "gemma2": "Gemma2",
        "gemma3": "Gemma3Text",
    }
    prefix = names[kind]
    config = getattr(transformers, f"{prefix}Config")(**{**SMALL, **extra})
    config._attn_implementation = attention
    torch.manual_seed(0)
    causal = "Gemma3ForCausalLM" if kind == "gemma3" else f"{prefix}ForCausalLM"
    return getattr(transformers, causal)(config).eval()


def _runner(network: torch.nn.Module, mode: str, trim: bool = True) -> CausalRunner:
    loaded = SimpleNamespace(model=network, dtype=next(network.parameters()).dtype)
    return CausalRunner(loaded, [5, 7], mode=mode, trim_last_layer=trim)


def _batch(lengths: list[int], shared: int = 0, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded rows of these lengths; the first ``shared`` tokens the same in every row
    (a prefix, type 0) and the rest type 1."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, 97, (len(lengths), width), generator=generator)
    ids[:, :shared] = ids[0, :shared]
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        types[row, shared:n] = 1
        ids[row, n:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _logits(runner: CausalRunner, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return runner(batch)


KINDS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]


@pytest.mark.parametrize("kind", KINDS)
def test_last_token_last_layer_equals_the_full_forward(kind: str) -> None:
    attention = "eager" if kind in ("gemma2", "gemma3") else "sdpa"
    network = _model(kind, attention)
    assert last_layer_layout(network, network.model) is not None
    # Very different lengths in one batch: most of the short rows is padding.
    batch = _batch([3, 40, 17, 1, 40], shared=0)
    full = _logits(_runner(network, "full"), batch)
    whole = _logits(_runner(network, "last", trim=False), batch)
    trimmed_runner = _runner(network, "last")
    trimmed = _logits(trimmed_runner, batch)
    assert trimmed_runner.last_layer_stats == {"trimmed": 1, "whole": 0}
    assert torch.allclose(trimmed, full, atol=1e-5, rtol=0)
    assert torch.allclose(trimmed, whole, atol=1e-5, rtol=0)
    assert float(full.std()) > 1e-3  # not vacuous


@pytest.mark.parametrize("kind", ["qwen3", "llama", "gemma", "gemma2"])
def test_prefix_cache_with_the_last_token_last_layer(kind: str) -> None:
    attention = "eager" if kind == "gemma2" else "sdpa"
    # (the runner runs sliding-window models without a prefix cache: Gemma2 made global here)
    full_only = {"layer_types": ["full_attention"] * SMALL["num_hidden_layers"]}
    network = _model(kind, attention, **(full_only if kind == "gemma2" else {}))
    batch = _batch([30, 12, 45, 13], shared=9)
    full = _logits(_runner(network, "full"), batch)
    runner = _runner(network, "prefix")
    assert torch.allclose(_logits(runner, batch), full, atol=1e-5, rtol=0)
    assert runner.prefix_stats["computed"] == 1 and runner.last_layer_stats["trimmed"] == 1


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_no_padding_and_both_attention_implementations(attention: str) -> None:
    network = _model("qwen3", attention)
    for lengths in ([20, 20, 20], [1], [25, 6]):
        batch = _batch(lengths)
        full = _logits(_runner(network, "full"), batch)
        assert torch.allclose(_logits(_runner(network, "last"), batch), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["gemma2", "gemma3", "mistral"])
def test_sliding_window_shorter_than_the_rows(kind: str) -> None:
    """The window comes with the model's own per-layer mask: the last-token row of it."""
    attention = "eager" if kind != "mistral" else "sdpa"
    extra = {"sliding_window": 6}
    if kind != "mistral":  # every layer sliding, so the last one is too
        extra["layer_types"] = ["sliding_attention"] * SMALL["num_hidden_layers"]
    network = _model(kind, attention, **extra)
    batch = _batch([30, 5, 22])
    full = _logits(_runner(network, "full"), batch)
    runner = _runner(network, "last")
    assert torch.allclose(_logits(runner, batch), full, atol=1e-5, rtol=0)
    assert runner.last_layer_stats["trimmed"] == 1
    wide = _model(kind, attention, **{**extra, "sliding_window": 64})
    assert not torch.allclose(_logits(_runner(wide, "full"), batch), full, atol=1e-4)


def test_attention_softcapping_and_query_pre_attn_scalar() -> None:
    network = _model("gemma2", "eager", attn_logit_softcapping=2.0, query_pre_attn_scalar=3)
    batch = _batch([11, 27, 4])
    full = _logits(_runner(network, "full"), batch)
    assert torch.allclose(_logits(_runner(network, "last"), batch), full, atol=1e-5, rtol=0)


def test_unknown_layers_and_attention_fall_back_to_the_whole_layer() -> None:
    network = _model("qwen3")
    batch = _batch([9, 21])
    full = _logits(_runner(network, "full"), batch)
    network.config._attn_implementation = "flex_attention"
    assert last_layer_layout(network, network.model) is None
    network.config._attn_implementation = "sdpa"
    network.model.config.model_type = "qwen3_moe"  # a model type the module does not know
    runner = _runner(network, "last")
    assert last_layer_layout(network, network.model) is None
    assert torch.allclose(_logits(runner, batch), full, atol=1e-5, rtol=0)
    assert runner.last_layer_stats == {"trimmed": 0, "whole": 1}


def test_gradients_flow_through_the_trimmed_layer() -> None:
    network = _model("qwen3")
    batch = _batch([9, 21])
    _runner(network, "last")(batch).sum().backward()
    grads = [p.grad for p in network.model.layers[-1].parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bfloat16_on_cpu_is_finite_and_close() -> None:
    network = _model("qwen3")
    batch = _batch([30, 4, 18], shared=3)
    full = _logits(_runner(network, "full"), batch)
    network = network.to(torch.bfloat16)
    for mode in ("last", "prefix"):
        out = _logits(_runner(network, mode), batch)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert torch.allclose(out, full, atol=0.5, rtol=0.05)
