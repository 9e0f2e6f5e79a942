"""The ``bge-layerwise`` family (bge-reranker-v2-minicpm-layerwise) against FlagEmbedding's
``LayerWiseFlagLLMReranker``: scores at the top and at chosen layers, truncation, the prompt,
detection, refusals and the adapters.

The model is a tiny random MiniCPM built here with FlagEmbedding's own classes
(``LayerWiseMiniCPMConfig``, ``LayerWiseMiniCPMForCausalLM``) and written in the layout of the
BAAI folder: ``config.json`` with ``auto_map`` and ``rope_scaling: null``, the two remote-code
files, ``model.safetensors`` and a tokenizer trained on the spot.

FlagEmbedding 1.4.2's classes need three workarounds under ``transformers`` 5 (all on the
reference's side; its scoring code runs unchanged):

- its modeling code reads ``config.rope_scaling["type"]``, which ``transformers`` 5 rewrites
  into ``{"rope_type": "default", ...}`` for ``rope_scaling: null`` (KeyError). The reference
  reads a copy of the folder whose config says ``{"type": "dynamic", "factor": 2.0}``: dynamic
  NTK rescales only past ``max_position_embeddings``, so its tables equal plain RoPE here
  (checked in :func:`_restore_rotary_tables`);
- ``_tied_weights_keys`` is a list, which ``post_init`` and ``save_pretrained`` of ``transformers``
  5 cannot read: the config unties the embeddings (the heads are one-output layers, nothing to
  tie) and the weights are written with ``safetensors`` directly;
- ``from_pretrained`` builds the model on the meta device and leaves its non-persistent rotary
  tables uninitialised (NaN scores): they are recomputed by the class's own ``_init_rope``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.errors import ModelFilesError, RandomHeadError
from bge_rerank_plugins.testing import SAMPLE_PASSAGES, SAMPLE_QUERY, sample_pairs
from bge_rerank_plugins.testing_causal import (
    copy_with_config,
    copy_without_weight,
    fast_tokenizer,
    save_remote_code_model,
    train_bpe_tokenizer,
)

pytest.importorskip("FlagEmbedding")

LAYERS, START = 4, 2
QUERY, PASSAGES = SAMPLE_QUERY, list(SAMPLE_PASSAGES)
_pairs = sample_pairs  # the name tests/test_cutoff_layer.py imports
_AUTO_MAP = {
    "AutoConfig": "configuration_minicpm_reranker.LayerWiseMiniCPMConfig",
    "AutoModel": "modeling_minicpm_reranker.LayerWiseMiniCPMModel",
    "AutoModelForCausalLM": "modeling_minicpm_reranker.LayerWiseMiniCPMForCausalLM",
}


def build_tiny_layerwise(out: Path, *, seed: int = 0, hidden_size: int = 32) -> Path:
    """A tiny random layer-wise MiniCPM reranker in the BAAI folder layout."""
    from FlagEmbedding.inference.reranker.decoder_only import models as flag_models
    from FlagEmbedding.inference.reranker.decoder_only.models.configuration_minicpm_reranker import (  # noqa: E501
        LayerWiseMiniCPMConfig,
    )
    from FlagEmbedding.inference.reranker.decoder_only.models.modeling_minicpm_reranker import (
        LayerWiseMiniCPMForCausalLM,
    )

    out.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    backend = train_bpe_tokenizer(600, specials, ["Yes", "No"])
    tokenizer = fast_tokenizer(
        backend, bos="<s>", eos="</s>", unk="<unk>", pad="<pad>", model_max_length=4096
    )
    ids = {name: backend.token_to_id(name) for name in specials}
    # The BAAI config's keys (MiniCPM-2B is 2304 wide, 40 layers, heads from layer 8).
    saved: dict[str, Any] = {
        "architectures": ["LayerWiseMiniCPMForCausalLM"],
        "auto_map": _AUTO_MAP,
        "model_type": "minicpm",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
        "dim_model_base": 8,
        "head_multi": True,
        "head_type": "simple",
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.2,  # wide, so random scores spread apart
        "intermediate_size": hidden_size * 2,
        "max_position_embeddings": 2048,
        "num_attention_heads": 4,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "scale_depth": 1.4,
        "scale_emb": 12,
        "start_layer": START,
        "tie_word_embeddings": False,
        "use_cache": False,
        "vocab_size": len(tokenizer),
    }
    options = {
        k: v for k, v in saved.items() if k not in ("architectures", "auto_map", "model_type")
    }
    # Only to construct the class (see the module); the rotary tables are not weights.
    options["rope_scaling"] = {"type": "dynamic", "factor": 2.0}
    torch.manual_seed(seed)
    model = LayerWiseMiniCPMForCausalLM(LayerWiseMiniCPMConfig(**options))
    code = Path(flag_models.__file__).parent
    files = ("configuration_minicpm_reranker.py", "modeling_minicpm_reranker.py")
    return save_remote_code_model(out, model, saved, tokenizer, code, files)


def _reference_copy(model: Path, out: Path) -> Path:
    """The folder with a rope_scaling FlagEmbedding's modeling code can read (see the module)."""
    return copy_with_config(model, out, {"rope_scaling": {"type": "dynamic", "factor": 2.0}})


def _restore_rotary_tables(network: Any) -> None:
    """Recompute the rotary buffers the meta-device load left empty, with the class's own code,
    and check they are plain RoPE's."""
    from FlagEmbedding.inference.reranker.decoder_only.models.modeling_minicpm_reranker import (
        MiniCPMRotaryEmbedding,
    )

    config = network.config
    plain = MiniCPMRotaryEmbedding(
        config.hidden_size // config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        base=config.rope_theta,
    )
    for layer in network.model.layers:
        layer.self_attn._init_rope()
        assert torch.equal(layer.self_attn.rotary_emb.cos_cached, plain.cos_cached)


@pytest.fixture(scope="module")
def layerwise(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_layerwise(tmp_path_factory.mktemp("layerwise") / "minicpm-layerwise")


@pytest.fixture(scope="module")
def reference(layerwise: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """FlagEmbedding's LayerWiseFlagLLMReranker over the same weights, float32 on the CPU."""
    from FlagEmbedding import LayerWiseFlagLLMReranker

    folder = _reference_copy(layerwise, tmp_path_factory.mktemp("layerwise-ref") / "ref")
    reranker = LayerWiseFlagLLMReranker(str(folder), use_fp16=False, devices="cpu", batch_size=3)
    _restore_rotary_tables(reranker.model)
    return reranker


def _flag(reference: Any, pairs, **options) -> list:
    return reference.compute_score([list(p) for p in pairs], **options)


def _scorer(model: Path, **options) -> CrossEncoderScorer:
    return CrossEncoderScorer(model, normalize=False, trust_remote_code=True, **options)


# ------------------------------------------------------------------ exact scores
@pytest.mark.parametrize("max_length", [512, 24])
def test_layerwise_equals_flagembedding(layerwise: Path, reference: Any, max_length: int) -> None:
    pairs = sample_pairs()
    scorer = _scorer(layerwise, max_length=max_length, batch_size=3)
    assert scorer._loaded.family == "bge-layerwise"
    assert scorer.runner.cutoff_layer == LAYERS  # FlagEmbedding's default: the top layer
    ours = scorer.score_pairs(pairs)
    assert ours == pytest.approx(_flag(reference, pairs, max_length=max_length), abs=1e-5)
    assert max(ours) - min(ours) > 1e-3  # not vacuous
    if max_length == 24:
        encoded = scorer.encoder.encode(pairs)
        assert encoded["truncated"] > 0


def test_cutoff_layer_reads_that_layers_head(layerwise: Path, reference: Any) -> None:
    pairs = sample_pairs()
    scorer = _scorer(layerwise, batch_size=4)
    theirs = _flag(reference, pairs, cutoff_layers=[START, LAYERS - 1])
    ours = {}
    for layer, expected in zip((START, LAYERS - 1), theirs):
        scorer.runner.cutoff_layer = layer
        ours[layer] = scorer.score_pairs(pairs)
        assert ours[layer] == pytest.approx(expected, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(ours[START], ours[LAYERS - 1])) > 1e-3
    for wrong in (START - 1, LAYERS + 1, True, "2"):
        with pytest.raises(ValueError, match=f"cutoff_layer must be one layer from {START}"):
            scorer.runner.cutoff_layer = wrong


def test_instruction_is_flagembeddings_prompt(layerwise: Path, reference: Any) -> None:
    pairs, prompt = sample_pairs()[:4], "Is passage B relevant to query A? Answer 'Yes' or 'No'."
    ours = _scorer(layerwise, instruction=prompt).score_pairs(pairs)
    assert ours == pytest.approx(_flag(reference, pairs, prompt=prompt), abs=1e-5)
    default = _scorer(layerwise).score_pairs(pairs)
    assert max(abs(a - b) for a, b in zip(ours, default)) > 1e-4


def test_bfloat16_runs_close_to_float32(layerwise: Path) -> None:
    full = _scorer(layerwise).score(QUERY, PASSAGES)
    half = _scorer(layerwise, dtype="bfloat16", device="cpu").score(QUERY, PASSAGES)
    assert half == pytest.approx(full, abs=0.15)


# ------------------------------------------------------------------ detection and refusals
def test_detection_and_refusals(layerwise: Path, tiny_bert: Path, tmp_path: Path) -> None:
    explicit = _scorer(layerwise, family="bge-layerwise")
    assert explicit._loaded.family == "bge-layerwise"
    with pytest.raises(ValueError, match="not a BGE layer-wise reranker"):
        CrossEncoderScorer(tiny_bert, family="bge-layerwise")
    with pytest.raises(ValueError, match="backend='onnx' does not run layer-wise"):
        _scorer(layerwise, backend="onnx")
    # The config class is remote code, as in the BAAI folder: an error that says so.
    with pytest.raises(ModelFilesError, match="trust_remote_code"):
        CrossEncoderScorer(layerwise)
    # A head missing from the checkpoint is never made up.
    broken = copy_without_weight(layerwise, tmp_path / "broken", "lm_head.0.linear_head.weight")
    with pytest.raises(RandomHeadError, match=r"lm_head\.0\.linear_head\.weight"):
        _scorer(broken)
    # Layouts whose score would not be the checkpoint's: refused before any weight is read.
    for key, value, message in (
        ("head_type", "raw", "head_type='raw'"),
        ("rope_scaling", {"type": "linear", "factor": 2.0}, "rope_scaling of type 'linear'"),
    ):
        with pytest.raises(ValueError, match=message):
            _scorer(copy_with_config(layerwise, tmp_path / f"other-{key}", {key: value}))


# ------------------------------------------------------------------ adapters
def test_llama_index_and_langchain_adapters_score_layerwise(
    layerwise: Path, adapters_equal_scorer
) -> None:
    options = {"model": str(layerwise), "trust_remote_code": True}
    adapters_equal_scorer(options, QUERY, PASSAGES)


def test_docstring_examples_of_the_layerwise_modules(doctests_pass) -> None:
    doctests_pass(
        "bge_rerank_plugins.runtime.causal_layerwise",
        "bge_rerank_plugins.runtime.minicpm_layerwise",
        "bge_rerank_plugins.runtime.layer_heads",  # rope_settings, shared with lightweight
    )
