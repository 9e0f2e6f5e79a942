"""Half-precision loading a slice at a time gives the network from_pretrained gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.runtime import half_weights
from bge_rerank_plugins.runtime.half_weights import (
    load_half_precision,
    read_state_dict,
    single_safetensors_file,
)


def _reference(model_dir: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    network = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype)
    return network.state_dict()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_same_network_as_from_pretrained(tiny_model: Path, dtype: torch.dtype) -> None:
    config = AutoConfig.from_pretrained(tiny_model)
    network = load_half_precision(str(tiny_model), config, dtype, {"revision": None})
    assert network is not None
    expected = _reference(tiny_model, dtype)
    got = network.state_dict()
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name
    # The caller's config is left as it was (from_pretrained gets a copy).
    assert config.to_dict() == AutoConfig.from_pretrained(tiny_model).to_dict()


def test_slices_smaller_than_a_row_and_across_rows(tiny_bert: Path) -> None:
    path = single_safetensors_file(str(tiny_bert))
    assert path is not None
    whole = read_state_dict(path, torch.bfloat16, slice_bytes=1 << 30)
    for slice_bytes in (1, 100, 4096):
        sliced = read_state_dict(path, torch.bfloat16, slice_bytes=slice_bytes)
        assert all(torch.equal(sliced[name], whole[name]) for name in whole)


def test_other_layouts_fall_back_to_from_pretrained(tiny_bert: Path, tmp_path: Path) -> None:
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_bert, sharded)
    (sharded / "model.safetensors.index.json").write_text("{}")
    assert single_safetensors_file(str(sharded)) is None
    assert single_safetensors_file(str(tmp_path)) is None  # no weights file at all
    # A Hub id that is not in the local cache (tests run offline).
    assert single_safetensors_file("BAAI/not-a-cached-model") is None
    config = AutoConfig.from_pretrained(tiny_bert)
    config.auto_map = {"AutoModelForSequenceClassification": "modeling.Custom"}
    assert load_half_precision(str(tiny_bert), config, torch.bfloat16, {}) is None


def test_scorer_in_bfloat16_uses_it_and_scores_as_before(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = [("capital of China", "Beijing is the capital."), ("panda", "It eats bamboo.")]
    calls: list[str] = []
    original = half_weights.read_state_dict

    def counting(path: str, dtype: torch.dtype, **options: int) -> dict:
        calls.append(path)
        return original(path, dtype, **options)

    monkeypatch.setattr(half_weights, "read_state_dict", counting)
    sliced = CrossEncoderScorer(tiny_bert, dtype="bfloat16", normalize=False).score_pairs(pairs)
    assert calls == [str(tiny_bert.resolve() / "model.safetensors")]

    from bge_rerank_plugins.loading import clear_model_cache

    clear_model_cache()
    monkeypatch.setattr(half_weights, "single_safetensors_file", lambda *_: None)
    regular = CrossEncoderScorer(tiny_bert, dtype="bfloat16", normalize=False).score_pairs(pairs)
    assert len(calls) == 1
    assert sliced == regular
