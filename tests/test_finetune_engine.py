"""CrossEncoderFinetuneEngine: LlamaIndex API, losses, options, best checkpoint, resume."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bge_rerank_plugins.finetune.engine import DEFAULTS, CrossEncoderFinetuneEngine
from bge_rerank_plugins.finetune.losses import GroupedSoftmaxLoss, grouped_softmax_loss


@dataclass
class Sample:
    """The shape of LlamaIndex's CrossEncoderFinetuningDatasetSample."""

    query: str
    context: str
    score: int


TOPICS = [
    ("what do pandas eat", "The giant panda eats bamboo in China.", "Capital gains tax on shares."),
    ("capital of China", "Beijing is the capital of China.", "Apples are a fruit rich in fibre."),
    ("iphone in water", "Switch the wet iPhone off and let it dry.", "The bank raised capital."),
    ("aspirin fever", "Aspirin reduces fever and pain.", "Boundary layer on a flat plate."),
]


def samples() -> list[Sample]:
    out = []
    for query, positive, negative in TOPICS:
        out += [Sample(query, positive, 1), Sample(query, negative, 0)]
    return out


def engine(model: Path, tmp_path: Path, **kwargs: object) -> CrossEncoderFinetuneEngine:
    options: dict[str, object] = {
        "model_id": str(model),
        "model_output_path": str(tmp_path / "out"),
        "batch_size": 2,
        "epochs": 1,
        "show_progress_bar": False,
    }
    options.update(kwargs)
    return CrossEncoderFinetuneEngine(samples(), **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------ losses
def test_grouped_softmax_is_cross_entropy_to_the_positive() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    assert float(grouped_softmax_loss(logits, labels)) == pytest.approx(float(expected), abs=1e-6)


def test_grouped_softmax_ignores_padding_and_distills() -> None:
    logits = torch.tensor([[2.0, 0.5, 99.0]])
    mask = torch.tensor([[True, True, False]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    expected = torch.nn.functional.cross_entropy(logits[:, :2], torch.tensor([0]))
    got = grouped_softmax_loss(logits, labels, mask=mask)
    assert float(got) == pytest.approx(float(expected), abs=1e-6)
    # the KL term is zero when the student equals the teacher, positive otherwise
    same = grouped_softmax_loss(logits, labels, mask=mask, teacher=logits, distill_weight=1.0)
    other = grouped_softmax_loss(
        logits, labels, mask=mask, teacher=torch.tensor([[0.0, 3.0, 0.0]]), distill_weight=1.0
    )
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    assert float(other) > 0.5


def test_grouped_loss_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="distill_weight"):
        GroupedSoftmaxLoss(object(), distill_weight=2.0)


# ------------------------------------------------------------------ LlamaIndex API
def test_llama_index_code_runs_unchanged(tiny_bert: Path, tmp_path: Path) -> None:
    """The calls of LlamaIndex's fine-tuning guide, positional arguments included."""
    out = tmp_path / "exp_finetune"
    finetune_engine = CrossEncoderFinetuneEngine(
        samples(), str(tiny_bert), str(out), 2, samples()[:4], None, 1, False, 2
    )
    finetune_engine.finetune()
    assert (out / "config.json").is_file()
    pytest.importorskip("llama_index.core")
    reranker = finetune_engine.get_finetuned_model(top_n=2)
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    nodes = [NodeWithScore(node=TextNode(text=s.context)) for s in samples()[:4]]
    kept = reranker.postprocess_nodes(nodes, query_bundle=QueryBundle("what do pandas eat"))
    assert type(reranker).__name__ == "BGEReranker"
    assert len(kept) == 2
    other = finetune_engine.get_finetuned_model(model_name=str(tiny_bert), top_n=1)
    assert other.top_n == 1


def test_loss_argument_is_honoured(tiny_bert: Path, tmp_path: Path) -> None:
    from sentence_transformers.cross_encoder import losses

    calls = []

    class Spy(losses.BinaryCrossEntropyLoss):
        def forward(self, inputs, labels, prompt=None, task=None):  # type: ignore[override]
            calls.append(len(inputs[0]))
            return super().forward(inputs, labels)

    e = engine(tiny_bert, tmp_path, loss=lambda model: Spy(model))
    e.finetune()
    assert calls == [2, 2, 2, 2]  # 8 pointwise rows in batches of 2: the custom loss ran
    assert e.train_dataset.column_names == ["query", "context", "label"]

    bce = engine(tiny_bert, tmp_path / "bce", loss="bce")
    assert type(bce._make_loss()).__name__ == "BinaryCrossEntropyLoss"
    softmax = engine(tiny_bert, tmp_path / "sm")
    assert softmax.loss == "softmax"  # the default 'auto' with no teacher scores in the data
    assert isinstance(softmax._make_loss(), GroupedSoftmaxLoss)
    row = softmax.train_dataset[0]
    assert row["label"] == [1.0, 0.0, 0.0, 0.0] and len(row["docs"]) == 4  # 1 + 3 negatives


@pytest.mark.slow
def test_training_lowers_the_loss_and_ranks_the_positives_first(
    tiny_bert: Path, tmp_path: Path
) -> None:
    from bge_rerank_plugins import CrossEncoderScorer

    e = engine(tiny_bert, tmp_path, epochs=30, learning_rate=2e-3, num_negatives=1, logging_steps=5)
    result = e.finetune()
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert losses[-1] < 0.5 * losses[0]
    scorer = CrossEncoderScorer(tmp_path / "out", normalize=False)
    for query, positive, negative in TOPICS:
        good, bad = scorer.score(query, [positive, negative])
        assert good > bad


def test_distillation_from_teacher_scores(tiny_bert: Path, tmp_path: Path) -> None:
    from bge_rerank_plugins.finetune.data import TrainingGroup

    groups = [
        TrainingGroup(q, [p], [n, "unrelated text"], [5.0], [0.0, -2.0]) for q, p, n in TOPICS
    ]
    e = CrossEncoderFinetuneEngine(
        groups,
        model_id=str(tiny_bert),
        model_output_path=str(tmp_path / "out"),
        batch_size=2,
        epochs=1,
        show_progress_bar=False,
        loss="distill",
        num_negatives=2,
    )
    assert list(e.train_dataset[0]) == ["query", "docs", "teacher", "label"]
    assert e.train_dataset[0]["teacher"] == [5.0, 0.0, -2.0] or e.train_dataset[0]["teacher"] == [
        5.0,
        -2.0,
        0.0,
    ]
    assert e.finetune().global_step == 2

    # the default loss ('auto') distils when every record brings teacher scores, as dicts too
    as_dicts = [
        {
            "query": g.query,
            "positives": list(g.positives),
            "negatives": list(g.negatives),
            "positive_scores": list(g.positive_scores),
            "negative_scores": list(g.negative_scores),
        }
        for g in groups
    ]

    def default_loss_engine(records: list, name: str) -> CrossEncoderFinetuneEngine:
        return CrossEncoderFinetuneEngine(
            records,
            model_id=str(tiny_bert),
            model_output_path=str(tmp_path / name),
            num_negatives=2,
            show_progress_bar=False,
        )

    auto = default_loss_engine(as_dicts, "auto")
    assert auto.loss == "distill" and "teacher" in auto.train_dataset.column_names
    assert auto._make_loss().distill_weight > 0
    as_dicts[0]["positive_scores"] = as_dicts[0]["negative_scores"] = None
    mixed = default_loss_engine(as_dicts, "mixed")
    assert mixed.loss == "softmax"  # one record without scores: no silent partial distillation
    assert "teacher" not in mixed.train_dataset.column_names


def test_negatives_are_redrawn_from_the_pool_on_each_read(tiny_bert: Path, tmp_path: Path) -> None:
    from bge_rerank_plugins.finetune.data import TrainingGroup

    negatives = [f"negative passage number {i}" for i in range(8)]
    teacher = {n: -float(i) for i, n in enumerate(negatives)}
    group = TrainingGroup("a query", ["the positive"], negatives, [9.0], list(teacher.values()))
    e = CrossEncoderFinetuneEngine(
        [group],
        model_id=str(tiny_bert),
        model_output_path=str(tmp_path / "out"),
        loss="distill",
        num_negatives=2,
        show_progress_bar=False,
    )
    draws = set()
    for _ in range(30):
        row = e.train_dataset[0]
        assert list(row) == ["query", "docs", "teacher", "label"]
        assert row["docs"][0] == "the positive" and row["label"] == [1.0, 0.0, 0.0]
        picked = row["docs"][1:]
        assert len(set(picked)) == 2 and set(picked) <= set(negatives)
        assert row["teacher"] == [9.0, *(teacher[n] for n in picked)]  # scores follow the draw
        draws.add(tuple(picked))
    assert len(draws) > 5  # 28 possible pairs: fixed negatives would give one
    batch = e.train_dataset[[0, 0]]  # the trainer reads lists of rows too
    assert len(batch["docs"]) == 2 and all(len(d) == 3 for d in batch["docs"])


def test_push_to_hub_fails_clearly_offline(tiny_bert: Path, tmp_path: Path) -> None:
    e = engine(tiny_bert, tmp_path)
    with pytest.raises(RuntimeError, match="finetune"):
        e.push_to_hub("me/model")  # nothing trained yet
    e.finetune()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        e.push_to_hub("me/model")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"loss": "hinge"}, "loss"),
        ({"max_length": "long"}, "max_length"),
        ({"precision": "fp8"}, "precision"),
        ({"max_minutes": 0}, "max_minutes"),
        ({"num_negatives": 0}, "num_negatives"),
    ],
)
def test_bad_arguments_are_named(tiny_bert: Path, tmp_path: Path, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        engine(tiny_bert, tmp_path, **kwargs)


def test_unknown_finetune_arguments_raise(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="learning_rte"):
        engine(tiny_bert, tmp_path).finetune(learning_rte=1e-4)


def test_auto_max_length_and_cpu_precision(
    tiny_bert: Path, tmp_path: Path, caplog, monkeypatch
) -> None:
    from bge_rerank_plugins.finetune import arguments, recipe

    caplog.set_level(logging.WARNING)
    e = engine(tiny_bert, tmp_path, precision="fp16")
    assert 32 <= e._max_length <= DEFAULTS["auto_max_length_cpu"] and e._max_length % 16 == 0
    assert recipe.mixed_precision(e.precision, e.device) == {}
    assert "fp32" in caplog.text
    assert _precision_of(engine(tiny_bert, tmp_path, precision="bf16")) == {"bf16": True}
    assert _precision_of(engine(tiny_bert, tmp_path, precision="fp32")) == {}
    # "auto" on CPU: bf16 autocast only where the CPU has bf16 hardware.
    for native, expected in ((True, {"bf16": True}), (False, {})):
        monkeypatch.setattr(arguments, "cpu_has_native_bf16", lambda native=native: native)
        assert _precision_of(engine(tiny_bert, tmp_path, precision="auto")) == expected
    fixed = engine(tiny_bert, tmp_path / "b", max_length=24)
    assert fixed._max_length == 24


def test_bf16_training_on_cpu_runs_and_saves_fp32_weights(tiny_bert: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    e = engine(tiny_bert, tmp_path, precision="bf16")
    result = e.finetune()
    assert result.global_step > 0
    losses = [row[k] for row in result.log_history for k in ("loss", "train_loss") if k in row]
    assert losses and all(math.isfinite(float(x)) for x in losses)
    saved = AutoModelForSequenceClassification.from_pretrained(result.output_path)
    assert {p.dtype for p in saved.parameters()} == {torch.float32}


def test_freezing_lower_layers_keeps_them_unchanged(tiny_bert: Path, tmp_path: Path) -> None:
    e = engine(tiny_bert, tmp_path, freeze_layers=1, learning_rate=1e-2)
    hf = e._hf_model()
    frozen = {n: p.detach().clone() for n, p in hf.named_parameters() if not p.requires_grad}
    assert any("layer.0." in n for n in frozen) and any("embeddings" in n for n in frozen)
    assert not any("layer.1." in n for n in frozen)
    before_top = hf.bert.encoder.layer[1].output.dense.weight.detach().clone()
    e.finetune()
    after = dict(e._hf_model().named_parameters())
    for name, value in frozen.items():
        assert torch.equal(after[name], value), name
    assert not torch.equal(e._hf_model().bert.encoder.layer[1].output.dense.weight, before_top)


def test_lora_is_merged_into_a_plain_model(tiny_bert: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    e = engine(tiny_bert, tmp_path, lora={"r": 4, "target_modules": ["query", "value"]})
    trainable = [n for n, p in e.model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable)
    assert not any(
        "lora_" not in n and "classifier" not in n and "pooler" not in n for n in trainable
    )
    e.finetune()
    out = tmp_path / "out"
    assert not (out / "adapter_config.json").exists()
    plain = AutoModelForSequenceClassification.from_pretrained(out)
    assert not any("lora" in n for n, _ in plain.named_parameters())


def test_best_checkpoint_is_kept_and_time_budget_stops(tiny_bert: Path, tmp_path: Path) -> None:
    e = engine(
        tiny_bert,
        tmp_path,
        val_dataset=samples(),
        epochs=20,
        evaluation_steps=2,
        learning_rate=5e-3,
        early_stopping_patience=3,
    )
    result = e.finetune()
    assert result.best_metric is not None
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    best_dir = Path(summary["best_checkpoint"])
    state = json.loads((best_dir / "trainer_state.json").read_text())
    evals = [x["eval_val_ndcg@10"] for x in state["log_history"] if "eval_val_ndcg@10" in x]
    assert state["best_metric"] == max(evals) == result.best_metric
    # the saved model is the best checkpoint's weights
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "out" / "model.safetensors")
    best = load_file(best_dir / "model.safetensors")
    key = next(k for k in saved if k.endswith("classifier.weight"))
    best_key = next(k for k in best if k.endswith("classifier.weight"))
    assert torch.equal(saved[key], best[best_key])

    timed = engine(tiny_bert, tmp_path / "timed", epochs=1000, max_minutes=0.05)
    t = time.time()
    timed_result = timed.finetune()
    assert timed_result.stopped_by_time and time.time() - t < 60
    assert 0 < timed_result.global_step < 4000


def test_chinese_data_end_to_end_with_xlmr(tiny_xlmr: Path, tmp_path: Path, caplog) -> None:
    from bge_rerank_plugins import CrossEncoderScorer

    data = [
        {"query": "感冒了怎么办", "context": "感冒了应该多喝水，注意休息。", "score": 1},
        {"query": "感冒了怎么办", "context": "中国的首都是北京。", "score": 0},
        {"query": "糖尿病饮食", "context": "糖尿病患者需要控制饮食。", "score": 1},
        {"query": "糖尿病饮食", "context": "熊猫主要吃竹子。", "score": 0},
    ]
    caplog.set_level(logging.WARNING)
    e = CrossEncoderFinetuneEngine(
        data,
        model_id=str(tiny_xlmr),
        model_output_path=str(tmp_path / "zh"),
        batch_size=2,
        epochs=15,
        show_progress_bar=False,
        learning_rate=3e-3,
        num_negatives=1,
    )
    assert e.unk_rate < 0.2 and "unknown token" not in caplog.text
    e.finetune()
    scorer = CrossEncoderScorer(tmp_path / "zh", normalize=False)
    good, bad = scorer.score("感冒了怎么办", ["感冒了应该多喝水，注意休息。", "中国的首都是北京。"])
    assert good > bad


def test_unknown_vocabulary_warns(tiny_bert: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    data = [
        {"query": "안녕하세요 여러분", "context": "반갑습니다 친구", "score": 1},
        {"query": "안녕하세요 여러분", "context": "สวัสดีครับ", "score": 0},
    ]
    e = CrossEncoderFinetuneEngine(
        data, model_id=str(tiny_bert), model_output_path=str(tmp_path / "o"), epochs=1
    )
    assert e.unk_rate > 0.2
    assert "unknown token" in caplog.text and "bge-reranker-v2-m3" in caplog.text


# ------------------------------------------------------------------ kill and resume
_TRAIN_SCRIPT = """
import os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
from bge_rerank_plugins.finetune import losses
forward = losses.GroupedSoftmaxLoss.forward
def slow(self, *a, **k):
    time.sleep(0.3)
    return forward(self, *a, **k)
losses.GroupedSoftmaxLoss.forward = slow
sys.path.insert(0, {tests!r})
from test_finetune_engine import engine
from pathlib import Path
engine(Path({model!r}), Path({root!r}), checkpoint_steps=2, max_steps=20).finetune()
"""


def test_resume_after_sigkill_continues_the_global_step(tiny_bert: Path, tmp_path: Path) -> None:
    script = _TRAIN_SCRIPT.format(
        tests=str(Path(__file__).parent), model=str(tiny_bert), root=str(tmp_path)
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = tmp_path / "out-checkpoints"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            done = [
                p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
            ]
            if done:
                time.sleep(0.5)  # let the write of this checkpoint finish
                break
            assert proc.poll() is None, "training ended before the first checkpoint"
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint appeared")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not (tmp_path / "out" / "config.json").exists()  # killed before the end
    resumed = engine(tiny_bert, tmp_path, checkpoint_steps=2, max_steps=20)
    result = resumed.finetune(resume_from_checkpoint=True)
    assert result.resumed_from_step is not None and result.resumed_from_step >= 2
    assert result.global_step == 20
    steps = [x["step"] for x in result.log_history if "loss" in x]
    assert steps and steps[-1] == 20
    assert (tmp_path / "out" / "config.json").is_file()


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tmp_path: Path) -> None:
    from bge_rerank_plugins.finetune.trainer import latest_checkpoint

    for step, complete in [(2, True), (4, True), (6, False)]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert latest_checkpoint(tmp_path / "missing") is None


def _precision_of(e) -> dict:
    from bge_rerank_plugins.finetune.recipe import mixed_precision

    return mixed_precision(e.precision, e.device)
