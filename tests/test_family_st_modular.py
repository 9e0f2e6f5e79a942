"""The "st-modular" family: sentence-transformers modular cross-encoders score as ST scores them.

Each model is built here with sentence-transformers itself (a tiny random BERT body from
``build_tiny_model``, then ``Transformer -> Pooling -> Dense ...`` saved by ``CrossEncoder``), and
every path of this package must give ``CrossEncoder(path).predict(pairs)`` within 1e-5 in
float32, or a clear error: never scores from a newly initialised head (issue 22).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from bge_rerank_plugins import CrossEncoderScorer, RandomHeadError, RerankerError, ScorerConfig
from bge_rerank_plugins.runtime.families import FAMILIES, detect_family, family_choices
from bge_rerank_plugins.runtime.loading import clear_model_cache, load_cross_encoder

st = pytest.importorskip("sentence_transformers")
torch = pytest.importorskip("torch")
from sentence_transformers.sentence_transformer.modules import (  # noqa: E402
    Dense,
    LayerNorm,
    Pooling,
    Transformer,
)

PAIRS = [
    ("what do giant pandas eat?", "The giant panda is a bear native to China that eats bamboo."),
    ("what do giant pandas eat?", "pandas is a Python library for data analysis."),
    ("capital of China", "Beijing is the capital of the People's Republic of China."),
    ("capital of China", "Capital gains tax applies when you sell shares."),
    ("手机掉进水里", "手机掉进水里后应立即关机，不要充电。"),
]
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _base(tiny_bert: Path, out: Path) -> Path:
    """The tiny BERT saved as a bare ``BertModel`` (no head) with its tokenizer."""
    from transformers import AutoConfig, BertModel

    torch.manual_seed(1)
    BertModel(AutoConfig.from_pretrained(tiny_bert)).save_pretrained(out)
    for name in TOKENIZER:
        if (tiny_bert / name).is_file():
            shutil.copy(tiny_bert / name, out / name)
    return out


def _modular(base: Path, out: Path, pooling="cls", ettin: bool = False) -> Path:
    """A modular cross-encoder saved by sentence-transformers v6 (``CrossEncoder(modules=...)``)."""
    torch.manual_seed(2)
    body = Transformer(str(base))
    width = body.get_embedding_dimension()
    pool = Pooling(width, pooling_mode=pooling)
    width = pool.get_embedding_dimension()
    to_score = {"activation_function": torch.nn.Identity(), "module_output_name": "scores"}
    if ettin:  # the Ettin rerankers' head: Dense -> LayerNorm -> Dense
        head = [Dense(width, width, activation_function=torch.nn.GELU()), LayerNorm(width)]
        head.append(Dense(width, 1, **to_score))
    else:  # the MiniLM v6 layout: Dense(h -> 1)
        head = [Dense(width, 1, **to_score)]
    for module in head:  # spread the random head's scores apart
        for param in module.parameters():
            torch.nn.init.normal_(param, std=0.3)
    st.CrossEncoder(modules=[body, pool, *head]).save_pretrained(str(out))
    assert (out / "modules.json").is_file()
    return out


@pytest.fixture(scope="module")
def base_encoder(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _base(tiny_bert, tmp_path_factory.mktemp("st-base"))


@pytest.fixture(scope="module", params=["minilm", "ettin"])
def modular(request, base_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"st-{request.param}")
    return _modular(base_encoder, out, ettin=request.param == "ettin")


def _st_scores(path: Path, raw: bool = True) -> list[float]:
    model = st.CrossEncoder(str(path), device="cpu")
    options = {"activation_fn": torch.nn.Identity()} if raw else {}
    return [float(x) for x in model.predict(PAIRS, **options)]


# ------------------------------------------------------------------ the scores
def test_scores_equal_sentence_transformers(modular: Path) -> None:
    scorer = CrossEncoderScorer(str(modular), device="cpu", dtype="float32", normalize=False)
    assert scorer._loaded.family == "st-modular"
    assert scorer.score_pairs(PAIRS) == pytest.approx(_st_scores(modular), abs=1e-5)
    # normalize=True is the sigmoid, which is what ST's predict applies by default here.
    probabilities = scorer.score_pairs(PAIRS, normalize=True)
    assert probabilities == pytest.approx(_st_scores(modular, raw=False), abs=1e-5)
    # Batching and padding change nothing (one pair per batch against all in one).
    single = CrossEncoderScorer(str(modular), device="cpu", dtype="float32", batch_size=1)
    assert single.score_pairs(PAIRS, normalize=False) == pytest.approx(
        scorer.score_pairs(PAIRS), abs=1e-5
    )


@pytest.mark.parametrize(
    "pooling", ["mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", ("cls", "mean")]
)
def test_every_pooling_mode_matches(pooling, base_encoder: Path, tmp_path: Path) -> None:
    path = _modular(base_encoder, tmp_path / "m", pooling=pooling)
    scorer = CrossEncoderScorer(str(path), device="cpu", dtype="float32", normalize=False)
    assert scorer.score_pairs(PAIRS) == pytest.approx(_st_scores(path), abs=1e-5)


def test_the_adapters_score_it_as_sentence_transformers(modular: Path) -> None:
    want = _st_scores(modular, raw=False)  # sigmoid: the adapters' default normalize=True
    query = PAIRS[0][0]
    passages = [p for q, p in PAIRS if q == query]
    expected = sorted(want[: len(passages)], reverse=True)
    if importlib.util.find_spec("llama_index") is not None:
        from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

        from bge_rerank_plugins.llama_index import BGEReranker

        nodes = [NodeWithScore(node=TextNode(text=p)) for p in passages]
        kept = BGEReranker(model=str(modular), device="cpu", top_n=5).postprocess_nodes(
            nodes, query_bundle=QueryBundle(query)
        )
        assert [n.score for n in kept] == pytest.approx(expected, abs=1e-5)
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from bge_rerank_plugins.langchain import BGERerankCompressor

    docs = [Document(page_content=p) for p in passages]
    out = BGERerankCompressor(model=str(modular), device="cpu", top_n=5).compress_documents(
        docs, query
    )
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx(expected, abs=1e-5)


def test_half_precision_and_int8_stay_close(modular: Path) -> None:
    want = _st_scores(modular)
    for options in ({"dtype": "bfloat16"}, {"backend": "torch-int8"}):
        got = CrossEncoderScorer(str(modular), device="cpu", normalize=False, **options)
        assert got.score_pairs(PAIRS) == pytest.approx(want, abs=0.1), options


def test_onnx_backend_matches_and_notices_a_changed_head(
    base_encoder: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    path = _modular(base_encoder, tmp_path / "m", ettin=True)
    onnx = CrossEncoderScorer(str(path), device="cpu", backend="onnx", normalize=False)
    assert onnx.score_pairs(PAIRS) == pytest.approx(_st_scores(path), abs=1e-4)
    # A new head (a fine-tuned export into the same folder) is exported again, not reused.
    from safetensors.torch import load_file, save_file

    weights = path / "4_Dense" / "model.safetensors"
    state = load_file(str(weights))
    before = weights.stat()
    save_file({k: v * 2 for k, v in state.items()}, str(weights))
    # Saved within the file system's timestamp granularity: same size, same modification time.
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    clear_model_cache()
    again = CrossEncoderScorer(str(path), device="cpu", backend="onnx", normalize=False)
    assert again.score_pairs(PAIRS) == pytest.approx(_st_scores(path), abs=1e-4)


# ------------------------------------------------------------------ detection and family=
def test_detection_and_the_family_option(modular: Path, tiny_bert: Path, tmp_path: Path) -> None:
    assert family_choices()[:3] == ("auto", "sequence-classification", "st-modular")
    assert set(FAMILIES) <= set(family_choices())
    config = load_cross_encoder(str(modular), device="cpu", load_weights=False).config
    assert detect_family(str(modular), config) == "st-modular"
    explicit = CrossEncoderScorer(str(modular), device="cpu", family="st-modular")
    assert explicit.score_pairs(PAIRS, normalize=False) == pytest.approx(
        _st_scores(modular), abs=1e-5
    )
    assert explicit.config.family == "st-modular"
    # A plain cross-encoder saved by ST v6 also has a modules.json (one Transformer): it stays
    # a sequence classifier.
    plain = tmp_path / "plain"
    st.CrossEncoder(str(tiny_bert), device="cpu").save_pretrained(str(plain))
    assert (plain / "modules.json").is_file()
    scorer = CrossEncoderScorer(str(plain), device="cpu", dtype="float32", normalize=False)
    assert scorer._loaded.family == "sequence-classification"
    assert scorer.score_pairs(PAIRS) == pytest.approx(_st_scores(plain), abs=1e-5)
    with pytest.raises(RerankerError, match="family='st-modular' needs a sentence-transformers"):
        CrossEncoderScorer(str(tiny_bert), device="cpu", family="st-modular")
    # Forcing the sequence-classification family on modules refuses the random head.
    with pytest.raises(RandomHeadError, match="family='st-modular'"):
        CrossEncoderScorer(str(modular), device="cpu", family="sequence-classification")
    with pytest.raises(ValueError, match="family must be one of"):
        ScorerConfig(family="modular")
    with pytest.raises(ValueError, match="family must be one of"):
        load_cross_encoder(str(modular), family="modular")
    with pytest.raises(TypeError, match="instruction must be a string"):
        ScorerConfig(instruction=3)  # type: ignore[arg-type]


def test_max_seq_length_of_the_transformer_applies(base_encoder: Path, tmp_path: Path) -> None:
    path = _modular(base_encoder, tmp_path / "m")
    config = json.loads((path / "sentence_bert_config.json").read_text())
    (path / "sentence_bert_config.json").write_text(json.dumps({**config, "max_seq_length": 12}))
    scorer = CrossEncoderScorer(str(path), device="cpu", dtype="float32", normalize=False)
    assert scorer.model_max_length == 12
    long = [(q, p * 3) for q, p in PAIRS[:3]]  # short queries: both truncate the passage only
    want = st.CrossEncoder(str(path), device="cpu").predict(long, activation_fn=torch.nn.Identity())
    assert scorer.score_pairs(long) == pytest.approx([float(x) for x in want], abs=1e-5)


# ------------------------------------------------------------------ never a random head
@pytest.mark.parametrize("backend", ["torch", "onnx", "torch-int8"])
def test_a_plain_encoder_is_refused_on_every_backend(base_encoder: Path, backend: str) -> None:
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    with pytest.raises(RandomHeadError, match="classifier"):
        CrossEncoderScorer(str(base_encoder), device="cpu", backend=backend).score("q", ["a"])


def _broken(modular: Path, tmp_path: Path) -> Path:
    path = tmp_path / "broken"
    shutil.copytree(modular, path)
    return path


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_missing_head_weights_are_refused_naming_the_module(
    modular: Path, tmp_path: Path, backend: str
) -> None:
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    path = _broken(modular, tmp_path)
    (path / "2_Dense" / "model.safetensors").unlink()
    with pytest.raises(RandomHeadError, match=r"module 2_Dense .*no weights file"):
        CrossEncoderScorer(str(path), device="cpu", backend=backend).score("q", ["a"])


def test_wrong_or_partial_head_weights_are_refused(modular: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = _broken(modular, tmp_path)
    weights = path / "2_Dense" / "model.safetensors"
    kept = {"linear.weight": load_file(str(weights))["linear.weight"]}
    save_file(kept, str(weights))  # no bias
    with pytest.raises(RandomHeadError, match=r"lacks the weights \['linear.bias'\]"):
        CrossEncoderScorer(str(path), device="cpu")
    save_file({"linear.weight": torch.zeros(7, 3), "linear.bias": torch.zeros(7)}, str(weights))
    clear_model_cache()
    with pytest.raises(RandomHeadError, match=r"do not fit its config\.json"):
        CrossEncoderScorer(str(path), device="cpu")


def test_a_missing_body_weight_is_refused(modular: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = _broken(modular, tmp_path)
    state = load_file(str(path / "model.safetensors"))
    dropped = next(k for k in state if "encoder.layer.1" in k)
    save_file({k: v for k, v in state.items() if k != dropped}, str(path / "model.safetensors"))
    with pytest.raises(RandomHeadError, match="Transformer body"):
        CrossEncoderScorer(str(path), device="cpu")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"type": "my_package.modules.Fancy"}, r"Fancy\) is a module type this scorer does not"),
        (
            {"type": "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"},
            "causal LM's yes/no logits",
        ),
    ],
)
def test_unknown_module_types_are_refused_by_name(
    modular: Path, tmp_path: Path, edit: dict, match: str
) -> None:
    path = _broken(modular, tmp_path)
    modules = json.loads((path / "modules.json").read_text())
    modules[1].update(edit)
    (path / "modules.json").write_text(json.dumps(modules))
    for load_weights in (True, False):  # refused before any weight is read, too
        clear_model_cache()
        with pytest.raises(RerankerError, match=match):
            load_cross_encoder(str(path), device="cpu", load_weights=load_weights)


def test_unsupported_settings_are_refused(modular: Path, tmp_path: Path) -> None:
    path = _broken(modular, tmp_path)
    pooling = path / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "attention"}))
    with pytest.raises(RerankerError, match=r"pooling mode\(s\) \['attention'\]"):
        CrossEncoderScorer(str(path), device="cpu")
    pooling.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "cls"}))
    dense = path / "2_Dense" / "config.json"
    config = json.loads(dense.read_text())
    dense.write_text(json.dumps({**config, "activation_function": "my_code.Activation"}))
    clear_model_cache()
    with pytest.raises(RerankerError, match="runs no custom code"):
        CrossEncoderScorer(str(path), device="cpu")
    dense.write_text(json.dumps(config))
    st_config = path / "config_sentence_transformers.json"
    saved = json.loads(st_config.read_text())
    st_config.write_text(json.dumps({**saved, "model_type": "SentenceTransformer"}))
    clear_model_cache()
    with pytest.raises(RandomHeadError, match="not a cross-encoder"):
        CrossEncoderScorer(str(path), device="cpu")


# ------------------------------------------------------------------ fine-tuning
def test_a_modular_base_fine_tunes_and_exports_its_head(modular: Path, tmp_path: Path) -> None:
    from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine

    # LlamaIndex's CrossEncoderFinetuningDatasetSample shape: query, context, score.
    samples = [SimpleNamespace(query=q, context=p, score=1) for q, p in PAIRS]
    negative = "Apples are a fruit rich in fibre."
    samples += [SimpleNamespace(query=q, context=negative, score=0) for q, _ in PAIRS]
    out = tmp_path / "tuned"
    engine = CrossEncoderFinetuneEngine(
        samples, model_id=str(modular), model_output_path=str(out), batch_size=2, epochs=1,
        max_steps=2, show_progress_bar=False,
    )  # fmt: skip
    engine.finetune()
    assert (out / "modules.json").is_file() and (out / "2_Dense" / "model.safetensors").is_file()
    scorer = CrossEncoderScorer(str(out), device="cpu", dtype="float32", normalize=False)
    assert scorer._loaded.family == "st-modular"
    tuned = _st_scores(out)
    assert scorer.score_pairs(PAIRS) == pytest.approx(tuned, abs=1e-5)
    assert tuned != pytest.approx(_st_scores(modular), abs=1e-6)  # it did train
