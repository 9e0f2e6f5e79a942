"""Never a random head: checkpoints without a reranking head are refused, naming what is missing.

``transformers`` loads a base encoder or a sentence-transformers modular model (``modules.json``:
Transformer -> Pooling -> Dense) as a sequence classifier with a fresh random ``classifier``;
the scorer used to return those random scores without an error (issue 22).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bge_rerank_plugins import CrossEncoderScorer, RandomHeadError, RerankerError
from bge_rerank_plugins.runtime.loading import load_cross_encoder

TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _base_encoder(tiny_bert: Path, out: Path) -> Path:
    """A tiny BERT saved as ``BertModel`` (no head), with the tiny model's tokenizer."""
    from transformers import AutoConfig, BertModel

    config = AutoConfig.from_pretrained(tiny_bert)
    BertModel(config).save_pretrained(out)
    for name in TOKENIZER:
        if (tiny_bert / name).is_file():
            shutil.copy(tiny_bert / name, out / name)
    return out


@pytest.fixture(scope="module")
def base_encoder(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _base_encoder(tiny_bert, tmp_path_factory.mktemp("base-encoder"))


@pytest.fixture(scope="module")
def st_modular(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers modular cross-encoder (Transformer -> Pooling(cls) -> Dense(1)),
    saved by sentence-transformers itself from the tiny base encoder."""
    modules = pytest.importorskip("sentence_transformers.sentence_transformer.modules")
    from sentence_transformers import CrossEncoder

    base = _base_encoder(tiny_bert, tmp_path_factory.mktemp("st-base"))
    transformer = modules.Transformer(str(base))
    width = getattr(transformer, "get_embedding_dimension", None) or (
        transformer.get_word_embedding_dimension
    )
    width = width()
    model = CrossEncoder(
        modules=[transformer, modules.Pooling(width, pooling_mode="cls"), modules.Dense(width, 1)]
    )
    out = tmp_path_factory.mktemp("st-modular")
    model.save_pretrained(str(out))
    assert (out / "modules.json").is_file() and (out / "2_Dense").is_dir()
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_base_encoder_is_refused_naming_the_head(base_encoder: Path, dtype: str) -> None:
    # bfloat16 loads through the state-dict path (runtime/half_weights.py).
    with pytest.raises(RandomHeadError) as caught:
        CrossEncoderScorer(str(base_encoder), device="cpu", dtype=dtype)
    message = str(caught.value)
    assert "classifier.weight" in message and "classifier.bias" in message
    assert "base encoder or bi-encoder" in message and "CrossEncoderFinetuneEngine" in message
    assert "BertModel" in message
    assert isinstance(caught.value, RerankerError)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_sentence_transformers_modular_model_is_refused(st_modular: Path, dtype: str) -> None:
    # As a sequence classifier it would get a random head; family="auto" loads its modules
    # (tests/test_family_st_modular.py). This one writes no score at all (no Dense to "scores").
    with pytest.raises(RandomHeadError) as caught:
        CrossEncoderScorer(
            str(st_modular), device="cpu", dtype=dtype, family="sequence-classification"
        )
    message = str(caught.value)
    assert "classifier.weight" in message
    assert "sentence-transformers modular model" in message and "not supported" in message
    assert "family='st-modular'" in message
    with pytest.raises(RandomHeadError, match=r"no module of .* writes a score"):
        CrossEncoderScorer(str(st_modular), device="cpu", dtype=dtype)


def test_the_half_precision_state_dict_path_checks_too(base_encoder: Path) -> None:
    import torch
    from transformers import AutoConfig

    from bge_rerank_plugins.runtime.half_weights import load_half_precision

    config = AutoConfig.from_pretrained(base_encoder)
    with pytest.raises(RandomHeadError, match="classifier"):
        load_half_precision(str(base_encoder), config, torch.float16, {}, name="enc")


@pytest.mark.parametrize("backend", ["onnx", "torch-int8"])
def test_backends_with_their_own_copy_refuse_it_too(base_encoder: Path, backend: str) -> None:
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    with pytest.raises(RandomHeadError, match="classifier"):
        CrossEncoderScorer(str(base_encoder), device="cpu", backend=backend).score("q", ["a"])


def test_the_float32_network_for_export_is_checked(base_encoder: Path) -> None:
    # Without the torch weights loaded (an ONNX graph exported earlier), the name check refuses;
    # past it, the float32 copy that backends export or quantize goes through the same check.
    with pytest.raises(RandomHeadError, match="classifier"):
        load_cross_encoder(str(base_encoder), device="cpu", load_weights=False)


def test_a_real_cross_encoder_still_loads(tiny_model: Path) -> None:
    for dtype in ("float32", "bfloat16"):
        scores = CrossEncoderScorer(str(tiny_model), device="cpu", dtype=dtype).score("q", ["a"])
        assert len(scores) == 1


def test_minilm_demo_model_with_its_saved_head_loads(minilm_model: Path) -> None:
    loaded = load_cross_encoder(str(minilm_model), device="cpu", load_weights=False)
    assert loaded.model is not None


def test_the_network_backends_export_goes_through_the_check(
    base_encoder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the name check (here switched off), cpu_float32_network (what the ONNX and int8
    # backends export or quantize) and float32_model load through the same loading check.
    from bge_rerank_plugins.runtime import loading

    monkeypatch.setattr(loading, "missing_from_checkpoint", lambda *args: [])
    loaded = load_cross_encoder(str(base_encoder), device="cpu", load_weights=False)
    with pytest.raises(RandomHeadError, match="classifier"):
        loaded.cpu_float32_network()
    with pytest.raises(RandomHeadError, match="classifier"):
        loaded.float32_model()
    assert not loaded.weights_loaded
