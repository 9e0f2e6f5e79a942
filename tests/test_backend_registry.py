"""The backend registry (issue 20): one BackendSpec per backend, chosen once, and the public
``runner=`` seam that replaced patching ``scorer._forward``."""

from __future__ import annotations

import ast
import importlib
import logging
from pathlib import Path

import pytest
import torch

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.adapter_options import ScorerOptions
from bge_rerank_plugins.runtime import backends
from bge_rerank_plugins.runtime.backends import BACKENDS, REGISTRY, BackendSpec, get
from bge_rerank_plugins.runtime.backends.batches import pad_batch
from bge_rerank_plugins.runtime.backends.torch import TorchRunner, run_model
from bge_rerank_plugins.runtime.families import FAMILIES
from bge_rerank_plugins.runtime.loading import load_cross_encoder

SRC = Path(__file__).resolve().parent.parent / "src" / "bge_rerank_plugins"
QUERY = "what is the capital of China?"
PASSAGES = ["Beijing is the capital of China.", "Apples are a fruit.", "Capital gains tax."]


# ------------------------------------------------------------------ the registry
def test_backends_are_the_registry_keys_and_each_spec_knows_its_name() -> None:
    assert BACKENDS == tuple(REGISTRY) == ("torch", "onnx", "onnx-int8", "torch-int8")
    for name, spec in REGISTRY.items():
        assert spec.name == name and get(name) is spec
        assert spec.description and callable(spec.build)
    # The facts the docs used to restate, now in one place.
    assert [n for n, s in REGISTRY.items() if s.exact] == ["torch", "onnx"]
    assert [n for n, s in REGISTRY.items() if s.needs_torch_weights] == ["torch"]
    assert {n: s.extra for n, s in REGISTRY.items()}["onnx-int8"] == "onnx"
    assert get("torch-int8").cpu_only and not get("torch").cpu_only


@pytest.mark.parametrize("bad", ["tensorrt", None, ["torch"]])
def test_unknown_names_are_value_errors_listing_the_choices(bad) -> None:
    with pytest.raises(ValueError, match=r"backend must be one of \('torch'"):
        get(bad)


def test_the_registry_is_cheap_to_import() -> None:
    """The config and the adapters import it to check names: no backend module comes along."""
    import subprocess
    import sys

    code = (
        "import sys, bge_rerank_plugins.runtime.backends\n"
        "heavy = [m for m in ('bge_rerank_plugins.runtime.backends.onnx', "
        "'bge_rerank_plugins.runtime.backends.torch_int8', 'onnxruntime') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_new_backend_is_one_registry_entry(tiny_bert: Path, monkeypatch) -> None:
    """No edit in the scorer or the config: the entry alone makes the name work end to end."""
    built = []

    def build(loaded):
        built.append(loaded)
        network = loaded.cpu_float32_network()
        return lambda tensors: run_model(network, tensors)

    spec = BackendSpec(
        name="my-backend",
        exact=True,
        needs_torch_weights=False,
        cpu_only=True,
        extra=None,
        description="the float32 network run by hand",
        build=build,
    )
    monkeypatch.setitem(backends.REGISTRY, "my-backend", spec)
    monkeypatch.setattr(backends, "BACKENDS", (*backends.BACKENDS, "my-backend"))
    reference = CrossEncoderScorer(tiny_bert, normalize=False).score(QUERY, PASSAGES)
    scorer = CrossEncoderScorer(tiny_bert, normalize=False, backend="my-backend")
    assert scorer.backend == "my-backend" and len(built) == 1
    assert scorer.score(QUERY, PASSAGES) == pytest.approx(reference, abs=1e-5)


def test_the_scorer_never_compares_backend_names() -> None:
    """The choice happens once, through the registry (Smell 4: three string branches)."""
    tree = ast.parse((SRC / "scorer.py").read_text(encoding="utf-8"))
    names = set(BACKENDS)
    offenders = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any(isinstance(c, ast.Constant) and c.value in names for c in node.comparators)
    ]
    assert not offenders, f"scorer.py compares backend names at lines {offenders}"


def test_help_texts_are_written_from_the_registry() -> None:
    description = ScorerOptions.model_fields["backend"].description
    for spec in REGISTRY.values():
        assert spec.summary() in description
    assert get("onnx").summary().startswith("onnx (exact, needs the onnx extra): ")
    assert get("torch-int8").summary().startswith("torch-int8 (approximate, CPU only): ")


# ------------------------------------------------------------------ runner caches
def test_expensive_runners_live_in_loaded_model_runners(tiny_bert: Path) -> None:
    first = CrossEncoderScorer(tiny_bert, backend="torch-int8")
    second = CrossEncoderScorer(tiny_bert, backend="torch-int8", batch_size=2)
    assert first._loaded is second._loaded
    assert first.runner is second.runner is first._loaded.runners["torch-int8"]
    # a declared field now, not an attribute smuggled into the dataclass's __dict__
    assert "_backend_runners" not in vars(first._loaded)
    assert second.score(QUERY, PASSAGES) == pytest.approx(first.score(QUERY, PASSAGES), abs=1e-6)


# ------------------------------------------------------------------ the runner= seam
def test_runner_sees_every_padded_batch(tiny_bert: Path) -> None:
    real = CrossEncoderScorer(tiny_bert).runner
    shapes = []

    def spy(tensors):
        shapes.append(tuple(tensors["input_ids"].shape))
        assert set(tensors) >= {"input_ids", "attention_mask"}
        return real(tensors)

    scorer = CrossEncoderScorer(tiny_bert, batch_size=2, runner=spy)
    assert scorer.runner is spy
    expected = CrossEncoderScorer(tiny_bert).score(QUERY, PASSAGES)
    assert scorer.score(QUERY, PASSAGES) == pytest.approx(expected, abs=1e-6)
    assert sorted(rows for rows, _ in shapes) == [1, 2]


def test_runner_is_checked_and_from_config_passes_it(tiny_bert: Path) -> None:
    with pytest.raises(TypeError, match="runner must be a callable"):
        CrossEncoderScorer(tiny_bert, runner="torch")  # type: ignore[arg-type]
    fixed = torch.tensor([[3.0]])
    scorer = CrossEncoderScorer.from_config(
        CrossEncoderScorer(tiny_bert).config, runner=lambda t: fixed.expand(len(t["input_ids"]), 1)
    )
    assert scorer.score(QUERY, PASSAGES, normalize=False) == [3.0, 3.0, 3.0]


def test_float32_torch_runner_does_not_rescue(tiny_bert: Path, caplog) -> None:
    """Only half precision is retried: a float32 NaN goes straight to the scorer's error."""
    runner = TorchRunner(load_cross_encoder(tiny_bert, dtype="float32"))
    assert not runner.rescues and "float32" in runner.precision
    half = TorchRunner(load_cross_encoder(tiny_bert, dtype="bfloat16"))
    assert half.rescues and half.precision == "in torch.bfloat16 and again in float32"
    calls = []

    def nan_forward(model, tensors):
        calls.append(next(model.parameters()).dtype)
        logits = run_model(model, tensors)
        return torch.full_like(logits, float("nan"))

    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins"):
        ids = half.loaded.tokenizer(QUERY, PASSAGES[0])["input_ids"]
        logits = TorchRunner(half.loaded, forward=nan_forward)(pad_batch([ids], None, 0, "cpu"))
    assert calls == [torch.bfloat16, torch.float32] and torch.isnan(logits).all()
    assert any("rescoring it in float32" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ families
def test_sequence_classification_reads_one_or_two_labels() -> None:
    family = FAMILIES["sequence-classification"]
    assert family.score(torch.tensor([[1.5], [-2.0]])).tolist() == [1.5, -2.0]
    assert family.score(torch.tensor([[0.5, 2.0]], dtype=torch.float16)).dtype == torch.float32
    assert family.score(torch.tensor([[0.5, 2.0]])).tolist() == [1.5]

    class Config:
        num_labels = 3

    with pytest.raises(ValueError, match="model='m' has 3 output labels"):
        family.check(Config(), "m")


# ------------------------------------------------------------------ the old paths
def test_old_backend_paths_are_the_moved_modules() -> None:
    for name in ("onnx", "torch_int8"):
        old = importlib.import_module(f"bge_rerank_plugins.backends.{name}")
        assert old is importlib.import_module(f"bge_rerank_plugins.runtime.backends.{name}")
    import bge_rerank_plugins.backends as old_backends

    assert old_backends.BACKENDS is BACKENDS and old_backends.check_backend("onnx") == "onnx"


def test_old_make_forward_keeps_its_shape(tiny_bert: Path) -> None:
    from bge_rerank_plugins.backends import make_forward

    loaded = load_cross_encoder(tiny_bert)
    assert make_forward("torch", loaded) is None
    forward = make_forward("torch-int8", loaded)
    tensors = pad_batch([loaded.tokenizer(QUERY, PASSAGES[1])["input_ids"]], None, 0, "cpu")
    assert torch.equal(forward(None, tensors), get("torch-int8").build(loaded)(tensors))
