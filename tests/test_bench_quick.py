"""`benchmarks/bench_scorer.py --quick` runs on a tiny model and checks that the libraries agree.

The script's ``main`` is called in-process (the CLI path, minus a fresh interpreter per test).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_scorer", ROOT / "benchmarks" / "bench_scorer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_quick_on_tiny_model(bench, tiny_bert, tmp_path, capsys):
    pytest.importorskip("sentence_transformers")
    code = bench.main(
        [
            "--quick",
            "--model",
            str(tiny_bert),
            "--data",
            str(tmp_path / "no-data-here"),
            "--max-length",
            "128",
            "--peers",
            "st",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "synthetic English" in out
    assert "sentence-transformers predict" in out
    assert "agreement: max abs diff" in out


def test_bench_quick_fails_on_disagreement(bench, tiny_bert, tmp_path, capsys):
    """A tolerance that no two computations can meet makes the check exit 1."""
    pytest.importorskip("onnxruntime")
    code = bench.main(
        [
            "--quick",
            "--model",
            str(tiny_bert),
            "--data",
            str(tmp_path / "no-data-here"),
            "--peers",
            "",
            "--atol",
            "-1",
        ]
    )
    assert code == 1
    assert "> atol" in capsys.readouterr().out


def test_same_order_counts_queries_ranked_alike(bench):
    # query 1: the same order at another scale; query 2: the last two passages swapped
    reference = [3.0, 2.0, 1.0, 0.9, 0.5, 0.4]
    other = [30.0, 20.0, 10.0, 0.9, 0.4, 0.5]
    assert bench._same_order(reference, other, 3) == (1, 2)


def test_half_precision_and_int8_labels_are_approximate(bench):
    for label in ("torch-fp16", "torch-bf16", "torch-int8@8", "onnx-int8"):
        assert bench._approximate(label), label
    for label in ("torch", "torch@8", "onnx"):
        assert not bench._approximate(label), label


def test_cuda_device_without_a_gpu_is_a_clear_error(bench, tiny_bert, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="--device cuda: this torch sees no CUDA GPU"):
        bench.main(["--model", str(tiny_bert), "--device", "cuda", "--data", str(tmp_path)])


def test_peer_inputs_are_recorded_and_other_tokens_found(bench, tiny_xlmr):
    # A peer that feeds its model other token ids than the pair text's own (FlagEmbedding's
    # decode-and-re-tokenize round trip around <unk>) is named with the pairs it changed.
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_xlmr)
    network = AutoModelForSequenceClassification.from_pretrained(tiny_xlmr).eval()
    pairs = [("what is a panda?", "a bear that eats bamboo"), ("capital of china", "Beijing")]
    rows: list[list[int]] = []
    hook = network.base_model.register_forward_pre_hook(
        bench._input_recorder(rows), with_kwargs=True
    )
    batch = tokenizer(
        [q for q, _ in pairs],
        [p for _, p in pairs],
        padding="max_length",
        max_length=32,
        return_tensors="pt",
    )
    batch["input_ids"][1, 1] = tokenizer.unk_token_id  # the second pair, fed as other tokens
    with torch.inference_mode():
        network(**batch)
    hook.remove()
    assert len(rows) == 2 and len(rows[0]) < 32  # padding dropped
    assert bench._pairs_with_other_inputs(tokenizer, pairs, 32, rows) == [1]
    assert bench._pairs_with_other_inputs(tokenizer, pairs, 32, rows + rows[:1]) == [1]
    assert bench._pairs_with_other_inputs(tokenizer, pairs, 32, []) == [0, 1]
