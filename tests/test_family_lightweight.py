"""The ``bge-lightweight`` family (bge-reranker-v2.5-gemma2-lightweight) against FlagEmbedding's
``LightWeightFlagLLMReranker``: scores at the top and at chosen layers, token compression,
truncation, the prompt, the sliding window, detection, refusals and the adapters.

The model is a tiny random Gemma2 built here with FlagEmbedding's own classes
(``CostWiseGemmaConfig``, ``CostWiseGemmaForCausalLM``) and written in the layout of the BAAI
folder: ``config.json`` with ``auto_map``, the two remote-code files, ``model.safetensors`` and a
tokenizer trained on the spot.

FlagEmbedding 1.4.2's classes need these workarounds under ``transformers`` 5, all on the
reference's side (its scoring code, ``token_compress`` included, runs unchanged), each checked
in :func:`_repair_reference`:

- ``CostWiseGemmaModel`` calls ``transformers``' ``Gemma2DecoderLayer`` the pre-4.45 way: without
  the rotary ``position_embeddings`` (TypeError: cannot unpack non-iterable NoneType) and reading
  ``layer_outputs[0]`` of what is now a tensor. Each layer's ``forward`` is wrapped: it computes
  ``(cos, sin)`` with ``transformers``' ``Gemma2RotaryEmbedding`` from the ``position_ids``
  FlagEmbedding passes (renumbered after each compression, as before) and returns ``(output,)``;
- the class defaults to SDPA attention, which ``transformers`` 5 refuses with Gemma2's attention
  soft cap (ValueError): the config is switched to ``"eager"``, Gemma2's own attention;
- ``_tied_weights_keys`` is a list, which ``transformers`` 5 cannot read: the config unties the
  embeddings (the heads are one-output layers) and the weights are written with ``safetensors``.

The ``transformers`` 5 layer applies no sliding window (its model does, in the mask), so the
FlagEmbedding comparisons use a window longer than every row; the window itself is checked
against ``transformers``' own ``Gemma2Model``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.errors import ModelFilesError, RandomHeadError
from bge_rerank_plugins.testing import SAMPLE_PASSAGES, SAMPLE_QUERY, sample_pairs
from bge_rerank_plugins.testing_causal import (
    copy_with_config,
    copy_without_weight,
    save_remote_code_model,
    train_gemma_tokenizer,
)

pytest.importorskip("FlagEmbedding")

LAYERS, START = 6, 2
QUERY, PASSAGES = SAMPLE_QUERY, list(SAMPLE_PASSAGES)
_AUTO_MAP = {
    "AutoConfig": "gemma_config.CostWiseGemmaConfig",
    "AutoModel": "gemma_model.CostWiseGemmaModel",
    "AutoModelForCausalLM": "gemma_model.CostWiseGemmaForCausalLM",
}
_NOT_CONFIG = ("architectures", "auto_map", "model_type")


def build_tiny_lightweight(out: Path, *, seed: int = 0, sliding_window: int = 4096) -> Path:
    """A tiny random lightweight Gemma2 reranker in the BAAI folder layout."""
    from FlagEmbedding.inference.reranker.decoder_only import models as flag_models
    from FlagEmbedding.inference.reranker.decoder_only.models.gemma_config import (
        CostWiseGemmaConfig,
    )
    from FlagEmbedding.inference.reranker.decoder_only.models.gemma_model import (
        CostWiseGemmaForCausalLM,
    )

    from bge_rerank_plugins.runtime.causal_lightweight import LIGHTWEIGHT_DEFAULT_PROMPT

    out.mkdir(parents=True, exist_ok=True)
    tokenizer, ids = train_gemma_tokenizer(600, (LIGHTWEIGHT_DEFAULT_PROMPT,))
    # The BAAI config's keys (Gemma2-9B: 3584 wide, 42 layers, heads from layer 8); the soft
    # caps are lowered so that they bend the tiny model's values.
    saved: dict[str, Any] = {
        "architectures": ["CostWiseGemmaForCausalLM"],
        "auto_map": _AUTO_MAP,
        "model_type": "cost_wise_gemma",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": 10.0,
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
        "pad_token_id": ids["<pad>"],
        "cache_implementation": "hybrid",
        "final_logit_softcapping": 5.0,
        "head_dim": 16,  # not hidden_size / heads, as in Gemma2
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 32,
        "initializer_range": 0.2,  # wide, so random scores spread apart
        "intermediate_size": 64,
        "layer_sep": 1,
        "layer_wise": True,
        "max_position_embeddings": 8192,
        "num_attention_heads": 4,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": 2,
        "query_pre_attn_scalar": 12,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "sliding_window": sliding_window,
        "start_layer": START,
        "tie_word_embeddings": False,
        "use_cache": False,
        "vocab_size": len(tokenizer),
    }
    options = {k: v for k, v in saved.items() if k not in _NOT_CONFIG}
    torch.manual_seed(seed)
    model = CostWiseGemmaForCausalLM(CostWiseGemmaConfig(**options))
    with torch.no_grad():  # Gemma2 norms scale by 1 + weight: make them count
        for name, weight in model.named_parameters():
            if "norm" in name:
                weight.normal_(0.0, 0.3)
    code = Path(flag_models.__file__).parent
    files = ("gemma_config.py", "gemma_model.py")
    return save_remote_code_model(out, model, saved, tokenizer, code, files)


def _repair_reference(reranker: Any, pairs: list[list[str]]) -> None:
    """The two transformers-5 workarounds of the module docstring, each shown to be needed."""
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RotaryEmbedding

    network = reranker.model
    with pytest.raises(TypeError, match="cannot unpack non-iterable NoneType"):
        reranker.compute_score(pairs)
    rotary = Gemma2RotaryEmbedding(network.config)
    for layer in network.model.layers:

        def forward(hidden_states, attention_mask=None, position_ids=None, _run=layer.forward, **_):
            # FlagEmbedding's other arguments (cache, use_cache, ...) are unused by a scoring run.
            cos_sin = rotary(hidden_states, position_ids)
            out = _run(hidden_states, cos_sin, attention_mask=attention_mask)
            return (out,)

        layer.forward = forward
    with pytest.raises(ValueError, match=r"sdpa.*softcap"):
        reranker.compute_score(pairs)
    network.config._attn_implementation = "eager"


@pytest.fixture(scope="module")
def lightweight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lightweight(tmp_path_factory.mktemp("lightweight") / "gemma2-lightweight")


@pytest.fixture(scope="module")
def reference(lightweight: Path) -> Any:
    """FlagEmbedding's LightWeightFlagLLMReranker over the same weights, float32 on the CPU."""
    from FlagEmbedding import LightWeightFlagLLMReranker
    from FlagEmbedding.inference.reranker.decoder_only.models.gemma_model import (
        CostWiseGemmaForCausalLM,
    )

    # use_fp16 is forced on when both half flags are off, then off again on the CPU.
    with pytest.warns(UserWarning, match="use_fp16"):
        reranker = LightWeightFlagLLMReranker(
            str(lightweight), use_fp16=False, devices="cpu", batch_size=3
        )
    assert isinstance(reranker.model, CostWiseGemmaForCausalLM)  # not its AutoModel fallback
    _repair_reference(reranker, [list(p) for p in sample_pairs()[:2]])
    return reranker


def _flag(reference: Any, pairs, **options) -> list:
    return reference.compute_score([list(p) for p in pairs], **options)


def _scorer(model: Path, **options) -> CrossEncoderScorer:
    return CrossEncoderScorer(model, normalize=False, trust_remote_code=True, **options)


# ------------------------------------------------------------------ exact scores
@pytest.mark.parametrize("max_length", [512, 24])
def test_lightweight_equals_flagembedding(
    lightweight: Path, reference: Any, max_length: int
) -> None:
    pairs = sample_pairs()
    scorer = _scorer(lightweight, max_length=max_length, batch_size=3)
    assert scorer._loaded.family == "bge-lightweight"
    runner = scorer.runner
    # FlagEmbedding's defaults: the top layer, no compression (its layer 8 is past this model).
    assert (runner.cutoff_layer, runner.compress_ratio, runner.compress_layers) == (LAYERS, 1, ())
    ours = scorer.score_pairs(pairs)
    assert ours == pytest.approx(_flag(reference, pairs, max_length=max_length), abs=1e-5)
    assert max(ours) - min(ours) > 1e-3  # not vacuous
    if max_length == 24:
        assert scorer.encoder.encode(pairs)["truncated"] > 0


def test_cutoff_layer_reads_that_layer(lightweight: Path, reference: Any) -> None:
    pairs = sample_pairs()
    scorer = _scorer(lightweight, batch_size=4)
    ours = {}
    for layer in (START, LAYERS - 1):
        scorer.runner.cutoff_layer = layer
        ours[layer] = scorer.score_pairs(pairs)
        # One layer per FlagEmbedding call: it reads lm_head[i] for its i-th chosen layer.
        assert ours[layer] == pytest.approx(
            _flag(reference, pairs, cutoff_layers=[layer]), abs=1e-5
        )
    assert max(abs(a - b) for a, b in zip(ours[START], ours[LAYERS - 1])) > 1e-3
    for wrong in (START - 1, LAYERS + 1, True, "2"):
        with pytest.raises(ValueError, match=f"cutoff_layer must be one layer from {START}"):
            scorer.runner.cutoff_layer = wrong


@pytest.mark.parametrize(
    ("ratio", "layers", "cutoff", "max_length"),
    [
        (2, [2, 4], LAYERS, 512),
        (4, [1], LAYERS - 1, 512),
        (3, [3, 3], LAYERS, 24),
        (8, [5], 4, 512),
    ],
)
def test_compression_equals_flagembedding(
    lightweight: Path, reference: Any, ratio: int, layers: list[int], cutoff: int, max_length: int
) -> None:
    pairs = sample_pairs()
    scorer = _scorer(lightweight, batch_size=3, max_length=max_length)
    plain = scorer.score_pairs(pairs)
    runner = scorer.runner
    runner.cutoff_layer, runner.compress_ratio, runner.compress_layers = cutoff, ratio, layers
    ours = scorer.score_pairs(pairs)
    theirs = _flag(
        reference,
        pairs,
        cutoff_layers=[cutoff],
        compress_ratio=ratio,
        compress_layers=layers,
        max_length=max_length,
    )
    assert ours == pytest.approx(theirs, abs=1e-5)
    if cutoff == LAYERS and layers[0] < cutoff:
        assert max(abs(a - b) for a, b in zip(ours, plain)) > 1e-4  # compression did something
    if layers == [5]:  # a compression at or above the cutoff layer changes nothing
        runner.compress_layers = ()
        assert scorer.score_pairs(pairs) == pytest.approx(ours, abs=1e-6)


def test_compress_passages_means_runs_of_tokens() -> None:
    from bge_rerank_plugins.runtime.gemma2_lightweight import compress_passages

    # Row 0: query 2, passage 5, prompt 1; row 1: query 1, passage 2, prompt 2, one pad.
    hidden = torch.arange(16.0).view(2, 8, 1)
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    new, keep = compress_passages(hidden, mask, torch.tensor([2, 1]), torch.tensor([1, 2]), 2)
    assert new[0, :, 0].tolist() == [0.0, 1.0, 2.5, 4.5, 6.0, 7.0]
    assert new[1, :, 0].tolist() == [8.0, 9.5, 11.0, 12.0, 0.0, 0.0]
    assert keep.tolist() == [[1] * 6, [1] * 4 + [0] * 2]


def test_instruction_and_default_prompt_are_flagembeddings(
    lightweight: Path, reference: Any
) -> None:
    from bge_rerank_plugins.runtime.causal_prompts import BGE_DEFAULT_PROMPT

    pairs, prompt = sample_pairs()[:4], "Is passage B relevant to query A? Answer 'Yes' or 'No'."
    ours = _scorer(lightweight, instruction=prompt).score_pairs(pairs)
    assert ours == pytest.approx(_flag(reference, pairs, prompt=prompt), abs=1e-5)
    default = _scorer(lightweight).score_pairs(pairs)
    assert max(abs(a - b) for a, b in zip(ours, default)) > 1e-4
    # The lightweight default prompt is not bge-reranker-v2-gemma's.
    gemma_prompt = _scorer(lightweight, instruction=BGE_DEFAULT_PROMPT).score_pairs(pairs)
    assert max(abs(a - b) for a, b in zip(gemma_prompt, default)) > 1e-4


def test_sliding_window_layers_match_transformers_gemma2(tmp_path: Path) -> None:
    """With a 4-token window, each layer equals transformers' own Gemma2Model's (which applies
    the window itself), read through the first head and the final soft cap."""
    from safetensors.torch import load_file
    from transformers import Gemma2Config, Gemma2Model

    from bge_rerank_plugins.runtime.backends.batches import pad_batch

    model = build_tiny_lightweight(tmp_path / "sliding", sliding_window=4)
    wide = build_tiny_lightweight(tmp_path / "wide")
    scorer = _scorer(model)
    encoded = scorer.encoder.encode(sample_pairs())
    tensors = pad_batch(encoded["input_ids"], encoded["token_type_ids"], 0, "cpu")
    ids, mask = tensors["input_ids"], tensors["attention_mask"]
    saved = json.loads((model / "config.json").read_text(encoding="utf-8"))
    config = Gemma2Config(**{k: v for k, v in saved.items() if k not in _NOT_CONFIG})
    config._attn_implementation = "eager"
    gemma = Gemma2Model(config).eval()
    weights = load_file(str(model / "model.safetensors"))
    body = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    assert not gemma.load_state_dict(body, strict=False).missing_keys
    with torch.no_grad():
        states = gemma(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        ours_network = scorer._loaded.model
        last = mask.sum(dim=1) - 1
        head = weights["lm_head.0.linear_head.weight"]
        for layer in (START, LAYERS - 1):
            h = gemma.norm(states[layer][torch.arange(len(ids)), last])
            expected = torch.tanh((h @ head.T)[:, 0] / 5.0) * 5.0
            ours = ours_network.score(ids, mask, layer)
            assert ours.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    # Not vacuous: the same weights with a window longer than every row score otherwise.
    windowed = scorer.score_pairs(sample_pairs())
    unwindowed = _scorer(wide).score_pairs(sample_pairs())
    assert max(abs(a - b) for a, b in zip(windowed, unwindowed)) > 1e-4


def test_bfloat16_runs_close_to_float32(lightweight: Path) -> None:
    full = _scorer(lightweight).score(QUERY, PASSAGES)
    half = _scorer(lightweight, dtype="bfloat16", device="cpu")
    assert half.score(QUERY, PASSAGES) == pytest.approx(full, abs=0.15)
    half.runner.compress_ratio, half.runner.compress_layers = 2, [2]
    assert all(abs(s) < 5.0 for s in half.score(QUERY, PASSAGES))


# ------------------------------------------------------------------ options, detection, refusals
def test_runner_options_are_validated_and_read_from_a_config(lightweight: Path) -> None:
    from bge_rerank_plugins.runtime import backends
    from bge_rerank_plugins.runtime.causal_lightweight import lightweight_runner
    from bge_rerank_plugins.runtime.families import FAMILIES, build_runner

    scorer = _scorer(lightweight)
    runner = scorer.runner
    for wrong in (0, True, 2.0):
        with pytest.raises(ValueError, match="compress_ratio must be an int >= 1"):
            runner.compress_ratio = wrong
    for wrong in ([0], [LAYERS], ["2"]):
        with pytest.raises(
            ValueError, match=f"compress_layers must be layers from 1 to {LAYERS - 1}"
        ):
            runner.compress_layers = wrong
    runner.compress_layers = 3
    assert runner.compress_layers == (3,)
    loaded = scorer._loaded
    built = lightweight_runner(
        loaded, "torch", cutoff_layer=3, compress_ratio=2, compress_layers=[2, 4]
    )
    assert (built.cutoff_layer, built.compress_ratio, built.compress_layers) == (3, 2, (2, 4))
    built = lightweight_runner(loaded, "torch", cutoff_layer=4)
    assert (built.cutoff_layer, built.compress_ratio) == (4, 1)
    # the config's option reaches the runner through the families' one mechanism
    spec = backends.REGISTRY["torch"]
    config = SimpleNamespace(cutoff_layer=3)
    built = build_runner(FAMILIES["bge-lightweight"], spec, loaded, config)
    assert built.cutoff_layer == 3
    assert _scorer(lightweight, cutoff_layer=3).runner.cutoff_layer == 3


def test_detection_and_refusals(lightweight: Path, tiny_bert: Path, tmp_path: Path) -> None:
    assert _scorer(lightweight, family="bge-lightweight")._loaded.family == "bge-lightweight"
    with pytest.raises(ValueError, match="not a BGE lightweight reranker"):
        CrossEncoderScorer(tiny_bert, family="bge-lightweight")
    with pytest.raises(ValueError, match="backend='onnx' does not run lightweight"):
        _scorer(lightweight, backend="onnx")
    # The config class is remote code, as in the BAAI folder: an error that says so.
    with pytest.raises(ModelFilesError, match="trust_remote_code"):
        CrossEncoderScorer(lightweight)
    # A head or a layer weight missing from the checkpoint is never made up.
    for key in ("lm_head.0.linear_head.weight", "model.layers.1.post_feedforward_layernorm.weight"):
        broken = copy_without_weight(lightweight, tmp_path / f"broken-{key}", key)
        with pytest.raises(RandomHeadError, match=key.replace(".", r"\.")):
            _scorer(broken)
    # Layouts whose score would not be the checkpoint's: refused before any weight is read.
    for key, value, message in (
        ("layer_wise", False, "layer_wise=False"),
        ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, "rope_scaling of type 'linear'"),
    ):
        with pytest.raises(ValueError, match=message):
            _scorer(copy_with_config(lightweight, tmp_path / f"other-{key}", {key: value}))


# ------------------------------------------------------------------ adapters
def test_llama_index_and_langchain_adapters_score_lightweight(
    lightweight: Path, adapters_equal_scorer
) -> None:
    options = {"model": str(lightweight), "trust_remote_code": True}
    adapters_equal_scorer(options, QUERY, PASSAGES)


def test_docstring_examples_of_the_lightweight_modules(doctests_pass) -> None:
    doctests_pass(
        "bge_rerank_plugins.runtime.causal_lightweight",
        "bge_rerank_plugins.runtime.gemma2_lightweight",
    )


def test_the_score_cache_keeps_layers_and_compressions_apart(lightweight: Path) -> None:
    """A scorer with a cache: changing the runner's layer or compression never returns the
    scores cached under the old setting."""
    pairs = sample_pairs()
    cached = _scorer(lightweight, batch_size=3, max_length=512, cache_size=1000)
    plain = cached.score_pairs(pairs)
    cached.runner.compress_ratio, cached.runner.compress_layers = 2, [2]
    compressed = cached.score_pairs(pairs)
    fresh = _scorer(lightweight, batch_size=3, max_length=512)
    fresh.runner.compress_ratio, fresh.runner.compress_layers = 2, [2]
    assert compressed == pytest.approx(fresh.score_pairs(pairs), abs=1e-6)
    assert max(abs(a - b) for a, b in zip(compressed, plain)) > 1e-4
    cached.runner.compress_ratio = 1
    cached.runner.cutoff_layer = 2
    fresh.runner.compress_ratio, fresh.runner.cutoff_layer = 1, 2
    assert cached.score_pairs(pairs) == pytest.approx(fresh.score_pairs(pairs), abs=1e-6)
