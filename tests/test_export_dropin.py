"""A fine-tuned model directory is a drop-in: every loader reads it with no extra arguments and
gives the same raw logits; saving is atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine
from bge_rerank_plugins.finetune.export import atomic_model_dir, export_model, recover_model_dir

QUERY = "what is a panda?"
PASSAGES = [
    "The giant panda is a bear native to south central China.",
    "pandas is a Python library for data analysis.",
    "熊猫是中国的国宝，主要吃竹子。",
    "Capital gains tax applies when you sell shares.",
]
TRAIN = [
    {"query": "what is a panda?", "context": "The giant panda is a bear.", "score": 1.0},
    {"query": "what is a panda?", "context": "Capital gains tax applies.", "score": 0.0},
    {"query": "capital of China", "context": "Beijing is the capital of China.", "score": 1.0},
    {"query": "capital of China", "context": "Apples are a fruit.", "score": 0.0},
]


@pytest.fixture(scope="module", params=["bert", "xlm-roberta"])
def finetuned(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained a few steps by the engine (weights differ from the base)."""
    from bge_rerank_plugins.testing import build_tiny_model

    root = tmp_path_factory.mktemp(f"dropin-{request.param}")
    base = build_tiny_model(request.param, root / "base")
    out = root / "out"
    engine = CrossEncoderFinetuneEngine(
        TRAIN,
        model_id=str(base),
        model_output_path=str(out),
        batch_size=2,
        epochs=2,
        show_progress_bar=False,
        learning_rate=1e-3,
    )
    result = engine.finetune()
    # batch_size counts LlamaIndex samples: 2 samples make 1 group per step; 2 groups, 2 epochs
    assert result.global_step == 4
    return out


def _hf_logits(path: Path, pairs: list[tuple[str, str]]) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    batch = tokenizer(
        [q for q, _ in pairs],
        [p for _, p in pairs],
        padding=True,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return model(**batch).logits.view(-1).tolist()


def test_output_is_a_plain_model_directory(finetuned: Path) -> None:
    names = {p.name for p in finetuned.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= names
    assert not any(n.startswith("adapter_") for n in names)
    config = json.loads((finetuned / "config.json").read_text())
    assert config["num_labels"] == 1 if "num_labels" in config else len(config["id2label"]) == 1
    summary = json.loads((finetuned / "training_summary.json").read_text())
    assert summary["global_step"] == 4  # 1 group per step (see the fixture)
    # the parent holds only the model and its checkpoints, no temporary leftovers
    assert not [p for p in finetuned.parent.iterdir() if p.name.startswith(".")]


def test_every_loader_gives_the_same_raw_logits(finetuned: Path) -> None:
    from FlagEmbedding import FlagReranker
    from sentence_transformers import CrossEncoder

    pairs = [(QUERY, p) for p in PASSAGES]
    reference = _hf_logits(finetuned, pairs)
    assert len(set(round(x, 6) for x in reference)) > 1  # a real, non-constant model

    ours = CrossEncoderScorer(finetuned, normalize=False).score(QUERY, PASSAGES)
    st = CrossEncoder(str(finetuned))
    st_scores = st.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    flag = FlagReranker(str(finetuned), use_fp16=False, devices="cpu")
    # FlagEmbedding tokenizes query and passage apart and then joins the ids; for the tiny
    # XLM-R tokenizer that differs on the Chinese passage (already for the untrained base
    # model, so not an export matter): compare it on the others.
    english = [i for i, p in enumerate(PASSAGES) if p.isascii()]
    flag_scores = flag.compute_score([list(pairs[i]) for i in english])

    assert ours == pytest.approx(reference, abs=1e-4)
    assert st_scores.tolist() == pytest.approx(reference, abs=1e-4)
    assert flag_scores == pytest.approx([reference[i] for i in english], abs=1e-4)
    # sentence-transformers' default (sigmoid) view agrees too
    default = CrossEncoder(str(finetuned)).predict(pairs, show_progress_bar=False).tolist()
    assert default == pytest.approx(torch.sigmoid(torch.tensor(reference)).tolist(), abs=1e-4)


def test_llama_index_reranker_loads_it(finetuned: Path) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from bge_rerank_plugins.llama_index import BGEReranker

    reference = _hf_logits(finetuned, [(QUERY, p) for p in PASSAGES])
    reranker = BGEReranker(model=str(finetuned), top_n=None, normalize=False)
    nodes = [NodeWithScore(node=TextNode(text=p, id_=str(i))) for i, p in enumerate(PASSAGES)]
    out = reranker.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    by_id = {n.node.node_id: n.score for n in out}
    assert [by_id[str(i)] for i in range(len(PASSAGES))] == pytest.approx(reference, abs=1e-4)


# ------------------------------------------------------------------ atomic writes
def _save_tiny(path: Path, seed: int) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bge_rerank_plugins.testing import build_tiny_model

    src = build_tiny_model("bert", path.parent / f"src-{seed}", seed=seed)
    model = AutoModelForSequenceClassification.from_pretrained(src)
    export_model(model, AutoTokenizer.from_pretrained(src), path)
    return _hf_logits(path, [(QUERY, p) for p in PASSAGES])


def test_failed_save_keeps_the_previous_model(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    target = tmp_path / "model"
    before = _save_tiny(target, seed=0)
    files_before = sorted(p.name for p in target.iterdir())

    src = tmp_path / "src-0"
    model = AutoModelForSequenceClassification.from_pretrained(src)
    real_save = model.save_pretrained

    def crash_half_way(directory: str | Path, **kwargs: object) -> None:
        real_save(directory, **kwargs)  # write the weights, then die before the tokenizer
        (Path(directory) / "model.safetensors").write_bytes(b"truncated")
        raise KeyboardInterrupt("killed during save")

    model.save_pretrained = crash_half_way  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        export_model(model, AutoTokenizer.from_pretrained(src), target)

    assert sorted(p.name for p in target.iterdir()) == files_before
    assert _hf_logits(target, [(QUERY, p) for p in PASSAGES]) == pytest.approx(before, abs=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_interrupted_swap_is_recovered(tmp_path: Path) -> None:
    """Killed between moving the old model aside and renaming the new one in: restored."""
    target = tmp_path / "model"
    before = _save_tiny(target, seed=0)
    aside = tmp_path / ".model.old-deadbeef"
    target.rename(aside)  # the state right after the first rename
    half = tmp_path / ".model.tmp-123"
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert recover_model_dir(target) == target
    assert not aside.exists() and not half.exists()
    assert _hf_logits(target, [(QUERY, p) for p in PASSAGES]) == pytest.approx(before, abs=1e-6)


def test_successful_save_replaces_the_model(tmp_path: Path) -> None:
    target = tmp_path / "model"
    first = _save_tiny(target, seed=0)
    second = _save_tiny(target, seed=1)
    assert second != pytest.approx(first, abs=1e-4)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_atomic_dir_refuses_an_incomplete_model(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text('{"old": true}')
    with pytest.raises(RuntimeError, match=r"no config\.json"), atomic_model_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"x")
    assert json.loads((target / "config.json").read_text()) == {"old": True}
