"""Backends: ONNX Runtime (fp32 and int8) and torch int8 agree with the torch scores."""

from __future__ import annotations

import json

import pytest

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.runtime.backends import BACKENDS, check_backend

QUERY = "what is the capital of China?"
PASSAGES = [
    "Beijing is the capital of the People's Republic of China.",
    "Capital gains tax applies when you sell shares.",
    "The giant panda is a bear native to south central China that eats bamboo and lives "
    "in the mountains; it is a national symbol.",
    "苹果是一种水果。",
    "Rerankers reorder candidates.",
    "The bank raised fresh capital from investors to meet the new regulatory requirements "
    "set by the central bank of China last year.",
]


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def test_unknown_backend_is_named(tiny_bert):
    with pytest.raises(ValueError, match="backend must be one of"):
        CrossEncoderScorer(tiny_bert, backend="tensorrt")
    assert check_backend("onnx") == "onnx"
    assert BACKENDS[0] == "torch"


def test_onnx_matches_torch(tiny_model):
    pytest.importorskip("onnxruntime")
    reference = CrossEncoderScorer(tiny_model, normalize=False, batch_size=4)
    onnx = CrossEncoderScorer(tiny_model, normalize=False, batch_size=4, backend="onnx")
    expected = reference.score(QUERY, PASSAGES)
    got = onnx.score(QUERY, PASSAGES)
    assert max(abs(x - y) for x, y in zip(expected, got)) < 1e-4
    # Exported once, next to the model, and reused by a fresh runner.
    folder = tiny_model / "onnx"
    assert (folder / "model.onnx").exists()
    stamp = json.loads((folder / "fingerprint.json").read_text())
    assert "config.json" in stamp["files"]


def test_onnx_reuses_the_cached_export(tiny_bert):
    pytest.importorskip("onnxruntime")
    from bge_rerank_plugins.loading import clear_model_cache

    CrossEncoderScorer(tiny_bert, backend="onnx").score(QUERY, PASSAGES[:2])
    path = tiny_bert / "onnx" / "model.onnx"
    mtime = path.stat().st_mtime_ns
    clear_model_cache()
    CrossEncoderScorer(tiny_bert, backend="onnx").score(QUERY, PASSAGES[:2])
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8", "torch-int8"])
def test_backends_with_their_own_copy_leave_the_torch_weights_unloaded(tiny_bert, backend):
    # Peak memory: the torch weights next to an ONNX session or an int8 copy were dead weight
    # (330 MB on XLM-R base with onnx). They load only when someone asks for them.
    if backend.startswith("onnx"):
        pytest.importorskip("onnxruntime")
    from bge_rerank_plugins.loading import clear_model_cache

    CrossEncoderScorer(tiny_bert, backend=backend)  # a first run exports / quantizes
    clear_model_cache()
    own_copy = CrossEncoderScorer(tiny_bert, normalize=False, backend=backend)
    got = own_copy.score(QUERY, PASSAGES)
    assert not own_copy._loaded.weights_loaded
    # A torch scorer on the same model gets the weights, from the same cache entry.
    reference = CrossEncoderScorer(tiny_bert, normalize=False)
    assert reference._loaded is own_copy._loaded and reference._loaded.weights_loaded
    expected = reference.score(QUERY, PASSAGES)
    tolerance = 1e-4 if backend == "onnx" else 0.1
    assert max(abs(x - y) for x, y in zip(expected, got)) < tolerance
    assert own_copy.score(QUERY, PASSAGES) == got


def test_the_model_property_loads_weights_on_demand(tiny_bert):
    pytest.importorskip("onnxruntime")
    scorer = CrossEncoderScorer(tiny_bert, backend="onnx")
    assert not scorer._loaded.weights_loaded
    assert scorer.model.config.num_labels == 1
    assert scorer._loaded.weights_loaded


def test_a_torch_scorers_model_is_shared_with_the_export_and_not_moved(tiny_bert):
    pytest.importorskip("onnxruntime")
    torch_scorer = CrossEncoderScorer(tiny_bert, normalize=False)
    network = torch_scorer.model
    assert torch_scorer._loaded.cpu_float32_network() is network
    before = torch_scorer.score(QUERY, PASSAGES)
    CrossEncoderScorer(tiny_bert, backend="onnx")
    assert torch_scorer.model is network and torch_scorer.score(QUERY, PASSAGES) == before


@pytest.mark.parametrize("backend", ["onnx-int8", "torch-int8"])
def test_int8_keeps_the_ranking(tiny_model, backend):
    if backend == "onnx-int8":
        pytest.importorskip("onnxruntime")
    from bge_rerank_plugins.testing import TINY_CORPUS

    # 27 passages: with only a handful, one swap of a near-tie decides the rank correlation.
    passages = list(TINY_CORPUS)
    reference = CrossEncoderScorer(tiny_model, normalize=False)
    quantized = CrossEncoderScorer(tiny_model, normalize=False, backend=backend)
    expected = reference.score(QUERY, passages)
    got = quantized.score(QUERY, passages)
    assert len(got) == len(passages)
    assert all(isinstance(x, float) for x in got)
    # Quantized scores are close but not equal; the order they give is (nearly) the same.
    assert max(abs(x - y) for x, y in zip(expected, got)) < 0.1
    assert _spearman(expected, got) >= 0.9
    if backend == "onnx-int8":
        from bge_rerank_plugins.runtime.backends.onnx import _int8_name, int8_options

        # Both graphs keep their weights in a .data file beside them; no work folder is left.
        # The int8 file's name says how it was quantized for this CPU (model.int8.onnx, or
        # model.int8.reduce_range.onnx where full-range weights would saturate).
        int8_name = _int8_name(int8_options())
        files = sorted(p.name for p in (tiny_model / "onnx").iterdir())
        assert files == sorted(
            [
                "fingerprint.json",
                int8_name,
                f"{int8_name}.data",
                "model.onnx",
                "model.onnx.data",
            ]
        )
        for graph in ("model.onnx", int8_name):
            mode = (tiny_model / "onnx" / graph).stat().st_mode & 0o777
            assert (tiny_model / "onnx" / f"{graph}.data").stat().st_mode & 0o777 == mode


def test_onnx_export_from_an_older_format_is_replaced(tiny_bert):
    """A cache whose fingerprint names another format is exported again, data files included."""
    pytest.importorskip("onnxruntime")
    from bge_rerank_plugins.loading import clear_model_cache
    from bge_rerank_plugins.runtime.backends.onnx import _int8_name, int8_options

    CrossEncoderScorer(tiny_bert, backend="onnx-int8").score(QUERY, PASSAGES[:2])
    folder = tiny_bert / "onnx"
    data = folder / f"{_int8_name(int8_options())}.data"  # the int8 graph made for this CPU
    stamp = json.loads((folder / "fingerprint.json").read_text())
    (folder / "fingerprint.json").write_text(json.dumps({**stamp, "format": 1}))
    data.write_bytes(b"stale")
    clear_model_cache()
    got = CrossEncoderScorer(tiny_bert, backend="onnx-int8", normalize=False).score(
        QUERY, PASSAGES[:2]
    )
    expected = CrossEncoderScorer(tiny_bert, normalize=False).score(QUERY, PASSAGES[:2])
    assert max(abs(x - y) for x, y in zip(expected, got)) < 0.1
    assert json.loads((folder / "fingerprint.json").read_text()) == stamp
    assert data.stat().st_size > len(b"stale")


def test_cache_keys_include_the_backend(tiny_bert):
    torch_scorer = CrossEncoderScorer(tiny_bert, normalize=False, cache_size=100)
    int8_scorer = CrossEncoderScorer(
        tiny_bert, normalize=False, cache_size=100, backend="torch-int8"
    )
    int8_scorer.cache = torch_scorer.cache  # one shared cache: the entries must not collide
    first = torch_scorer.score(QUERY, PASSAGES)
    second = int8_scorer.score(QUERY, PASSAGES)
    assert len(torch_scorer.cache) == 2 * len(PASSAGES)
    assert first != second


@pytest.mark.minilm
def test_int8_on_real_minilm_keeps_order(minilm_model):
    """Real weights: the int8 ONNX scores rank passages like the float32 ones."""
    pytest.importorskip("onnxruntime")
    reference = CrossEncoderScorer(minilm_model, normalize=False)
    quantized = CrossEncoderScorer(minilm_model, normalize=False, backend="onnx-int8")
    onnx = CrossEncoderScorer(minilm_model, normalize=False, backend="onnx")
    expected = reference.score(QUERY, PASSAGES)
    assert max(abs(x - y) for x, y in zip(expected, onnx.score(QUERY, PASSAGES))) < 1e-4
    assert _spearman(expected, quantized.score(QUERY, PASSAGES)) >= 0.8


@pytest.mark.parametrize("per_token", [True, False], ids=["per-token", "quantize_dynamic"])
def test_torch_int8_shares_weights_and_leaves_the_source_model_alone(tiny_bert, per_token):
    import torch
    from transformers import AutoModelForSequenceClassification

    from bge_rerank_plugins.runtime.backends.torch_int8 import quantize_linear_int8

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    inputs = {"input_ids": torch.tensor([[2, 7, 9, 11, 3]])}
    with torch.inference_mode():
        before = model(**inputs).logits
    quantized = quantize_linear_int8(model, per_token=per_token)
    # the source keeps its float32 Linear layers and its outputs
    assert all(type(m) is torch.nn.Linear for m in model.modules() if "Linear" in type(m).__name__)
    with torch.inference_mode():
        assert torch.equal(model(**inputs).logits, before)
        assert torch.allclose(quantized(**inputs).logits, before, atol=0.1)
    # no second float32 copy of the embeddings: the int8 model reads the same tensor
    embeddings = model.get_input_embeddings().weight
    assert quantized.get_input_embeddings().weight.data_ptr() == embeddings.data_ptr()
    # every encoder Linear is int8; the classification head stays float32
    assert not any(type(m) is torch.nn.Linear for m in quantized.base_model.modules())
    assert type(quantized.classifier) is torch.nn.Linear
    assert quantized.classifier.weight.data_ptr() == model.classifier.weight.data_ptr()


def test_int8_linear_is_per_token_int8_arithmetic():
    """Int8Linear computes exactly round(x / row scale) @ round(W / channel scale), rescaled."""
    import torch

    from bge_rerank_plugins.runtime.backends.torch_int8 import Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 10)
    # tokens of very different sizes
    x = torch.randn(3, 5, 24) * torch.logspace(-2, 2, 5)[None, :, None]
    x[0, 0] = 0.0  # an all-zero token must not divide by zero
    x[1, 2, 3] = 40.0  # an outlier spoils only its own row

    with torch.inference_mode():
        layer = Int8Linear(linear)  # the weight range this CPU multiplies exactly (127 or 64)
        got = layer(x)
    weight = linear.weight.detach().double()
    weight_scale = weight.abs().amax(dim=1) / layer.weight_max
    weight_int = torch.round(weight / weight_scale[:, None])
    rows = x.reshape(-1, 24).double()
    row_scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    row_int = torch.round(rows / row_scale)
    expected = (row_int @ weight_int.T) * row_scale * weight_scale + linear.bias.detach().double()

    assert got.shape == (3, 5, 10) and got.dtype == torch.float32
    assert torch.allclose(got.reshape(-1, 10).double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(got[0, 0], linear.bias.detach())
    # Against float32, every token keeps a small error relative to its own size, the 0.01-sized
    # ones included: one scale for the whole batch (set by the 40.0 outlier) would round them
    # to zero.
    with torch.inference_mode():
        reference = linear(x) - linear.bias
        got_products = got - linear.bias
    error = (reference - got_products).abs().amax(dim=-1)
    size = reference.abs().amax(dim=-1)
    nonzero = size > 0
    assert (error[nonzero] / size[nonzero]).max() < 0.05


def test_int8_linear_bias_free_and_single_row():
    import torch

    from bge_rerank_plugins.runtime.backends.torch_int8 import Int8Linear

    linear = torch.nn.Linear(16, 4, bias=False)
    x = torch.randn(1, 16)
    with torch.inference_mode():
        got = Int8Linear(linear)(x)
    assert got.shape == (1, 4)
    assert torch.allclose(got, linear(x).detach(), atol=0.05)


def test_shared_projection_slices_equal_separate_int8_layers():
    """query/key/value as slices of one int8 product: the same numbers as three Int8Linear
    layers (integer sums are exact), in any call order, and no activation kept afterwards."""
    import torch

    from bge_rerank_plugins.runtime.backends.torch_int8 import (
        Int8Linear,
        Int8ProjectionSlice,
        SharedInt8Projection,
    )

    torch.manual_seed(0)
    layers = [torch.nn.Linear(16, 8), torch.nn.Linear(16, 8, bias=False), torch.nn.Linear(16, 4)]
    shared = SharedInt8Projection(layers)
    slices = [
        Int8ProjectionSlice(shared, i, a, b) for i, (a, b) in enumerate([(0, 8), (8, 16), (16, 20)])
    ]
    x, other = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with torch.inference_mode():
        expected = [Int8Linear(layer)(x) for layer in layers]
        for order in ([0, 1, 2], [2, 0, 1]):
            got = {i: slices[i](x) for i in order}
            for i in range(3):
                assert torch.equal(got[i], expected[i])
            assert not shared._pending  # dropped once all three have read it
        # a different tensor is computed afresh, not served from the other one's product
        assert torch.equal(slices[0](x), expected[0])
        assert torch.equal(slices[1](other), Int8Linear(layers[1])(other))
        assert torch.equal(slices[0](x), expected[0])  # a second read by one slice recomputes


def test_torch_int8_shares_the_attention_projections(tiny_bert):
    import threading

    import torch
    from transformers import AutoModelForSequenceClassification

    from bge_rerank_plugins.runtime.backends import torch_int8

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    quantized = torch_int8.quantize_linear_int8(model, per_token=True)
    kinds = [type(m).__name__ for m in quantized.modules()]
    layers = model.config.num_hidden_layers
    assert kinds.count("Int8ProjectionSlice") == 3 * layers
    assert kinds.count("SharedInt8Projection") == layers
    saved = torch_int8._share_projections
    torch_int8._share_projections = lambda *args: None
    try:
        separate = torch_int8.quantize_linear_int8(model, per_token=True)
    finally:
        torch_int8._share_projections = saved
    torch.manual_seed(1)
    batches = [torch.randint(4, 100, (3, 9)) for _ in range(6)]
    with torch.inference_mode():
        expected = [separate(input_ids=ids).logits for ids in batches]
        assert all(
            torch.equal(quantized(input_ids=ids).logits, e) for ids, e in zip(batches, expected)
        )
        # threads sharing the model never read each other's products
        results: dict[int, list] = {}

        def work(worker: int) -> None:
            with torch.inference_mode():
                results[worker] = [quantized(input_ids=ids).logits for ids in batches * 3]

        threads = [threading.Thread(target=work, args=(w,)) for w in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for got in results.values():
        assert all(torch.equal(g, e) for g, e in zip(got, expected * 3))


@pytest.mark.parametrize(
    ("limit", "expect_per_token", "expect_weight_max"),
    [(127, True, 127), (64, True, 64), (None, False, None)],
    ids=["vnni", "no-vnni", "no-int-mm-kernel"],
)
def test_torch_int8_picks_per_token_only_where_it_is_safe(
    monkeypatch, limit, expect_per_token, expect_weight_max
):
    import torch

    from bge_rerank_plugins.runtime.backends import torch_int8

    monkeypatch.setattr(torch_int8, "int_mm_weight_limit", lambda: limit)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    quantized = torch_int8.quantize_linear_int8(model)
    kinds = {type(m).__name__ for m in quantized.modules()}
    assert ("Int8Linear" in kinds) is expect_per_token
    assert type(quantized[0]) is not torch.nn.Linear  # quantized either way
    if expect_per_token:
        assert quantized[0].weight_max == expect_weight_max
        assert int(quantized[0].weight_int8.abs().max()) == expect_weight_max


@pytest.mark.parametrize("backend", ["onnx", "torch-int8"])
def test_padded_example_tokenization_holds_the_model_lock(tiny_bert, backend, monkeypatch):
    # The tokenizer keeps padding as state shared by every scorer on the model; the load-time
    # check and the ONNX export tokenize with padding=True, which must not interleave with a
    # scoring thread's tokenization (the padding would leak into that thread's pairs).
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    import bge_rerank_plugins.runtime.backends.onnx as onnx_backend
    import bge_rerank_plugins.runtime.first_token as first_token
    from bge_rerank_plugins.runtime.loading import load_cross_encoder
    from bge_rerank_plugins.tokenization import example_batch

    loaded = load_cross_encoder(tiny_bert, load_weights=False)
    held: list[bool] = []

    def spy(tokenizer):
        held.append(loaded.lock._is_owned())
        return example_batch(tokenizer)

    monkeypatch.setattr(first_token, "example_batch", spy)
    monkeypatch.setattr(onnx_backend, "example_batch", spy)
    for stale in (tiny_bert / "onnx").glob("*"):
        stale.unlink()
    CrossEncoderScorer(tiny_bert, backend=backend).score(QUERY, PASSAGES[:2])
    assert held and all(held)
