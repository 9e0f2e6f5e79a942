"""Issue 20 (architecture), fine-tuning part: the engine split into facade, recipe, grouping,
modeling and trainer; one p95 rule, one sample parser, one device pick, one offline check."""

from __future__ import annotations

import ast
import dataclasses
import doctest
import importlib
import inspect
import math
import os
from pathlib import Path

import pytest

from bge_rerank_plugins import tokenization
from bge_rerank_plugins.finetune.recipe import DEFAULTS, FinetuneConfig, pick_max_length
from bge_rerank_plugins.tokenization import p95, p95_length

SRC = Path(__file__).resolve().parents[1] / "src" / "bge_rerank_plugins"
FINETUNE_MODULES = sorted(p.stem for p in (SRC / "finetune").glob("*.py"))

ROWS = [
    {"query": "what do pandas eat", "context": "The giant panda eats bamboo.", "score": 1},
    {"query": "what do pandas eat", "context": "Capital gains tax on shares.", "score": 0},
    {"query": "capital of China", "context": "Beijing is the capital of China.", "score": 1},
    {"query": "capital of China", "context": "Apples are rich in fibre.", "score": 0},
]


def _engine(model: Path, out: Path, data: list | None = None, **kwargs: object):
    from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine

    options: dict[str, object] = {"batch_size": 2, "epochs": 1, "show_progress_bar": False}
    options.update(kwargs)
    return CrossEncoderFinetuneEngine(
        data if data is not None else ROWS, str(model), str(out), **options
    )


# ------------------------------------------------------------------ one p95 rule
@pytest.mark.parametrize(
    "name", ["bge_rerank_plugins.tokenization", "bge_rerank_plugins.finetune.recipe"]
)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_p95_is_the_scorers_nearest_rank() -> None:
    for n in range(1, 2001):
        lengths = list(range(n, 0, -1))
        # the scorer's max_length="auto" index: min(n - 1, ceil(0.95 * n) - 1)
        assert p95(lengths) == sorted(lengths)[min(n - 1, math.ceil(0.95 * n) - 1)]
    # the engine's old index int(0.95 * (n - 1)) differed for small n: 10 pairs -> the 9th
    assert p95(range(1, 11)) == 10


def test_p95_length_rounds_floors_and_caps() -> None:
    assert p95_length([100] * 20, multiple=16, floor=32, cap=None) == 112
    assert p95_length([100] * 20, multiple=8, floor=8, cap=None) == 104
    assert p95_length([3], multiple=16, floor=32, cap=None) == 32
    assert p95_length([300], multiple=16, floor=32, cap=192) == 192
    assert p95_length([3], multiple=16, floor=32, cap=24) == 24  # the cap wins over the floor
    with pytest.raises(ValueError, match="lengths is empty"):
        p95_length([], multiple=16, floor=32, cap=None)
    with pytest.raises(ValueError, match="multiple"):
        p95_length([5], multiple=0, floor=32, cap=None)
    with pytest.raises(TypeError, match="cap"):
        p95_length([5], multiple=16, floor=32, cap="192")  # type: ignore[arg-type]


def test_tokenization_is_a_leaf_module() -> None:
    tree = ast.parse((SRC / "tokenization.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("bge_rerank_plugins")
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("bge_rerank_plugins") for a in node.names)


class _LengthTokenizer:
    """Each pair is as many tokens as its passage has words."""

    def __call__(self, queries, passages, truncation, max_length):
        return {"input_ids": [[0] * min(len(p.split()), max_length) for p in passages]}


def test_auto_max_length_uses_the_shared_rule_with_the_engines_numbers() -> None:
    pairs = [("q", "w " * n) for n in [20] * 9 + [70]]  # 10 pairs: the p95 is the longest
    tok = _LengthTokenizer()
    assert pick_max_length("auto", tokenizer=tok, pairs=pairs, device="cpu", limit=512) == 80
    assert pick_max_length("auto", tokenizer=tok, pairs=pairs, device="cpu", limit=64) == 64
    long = [("q", "w " * 400)] * 3
    assert pick_max_length("auto", tokenizer=tok, pairs=long, device="cpu", limit=512) == 192
    assert pick_max_length("auto", tokenizer=tok, pairs=long, device="cuda", limit=512) == 400
    assert pick_max_length(24, tokenizer=tok, pairs=long, device="cpu", limit=512) == 24
    assert pick_max_length(600, tokenizer=tok, pairs=long, device="cpu", limit=512) == 512


# ------------------------------------------------------------------ FinetuneConfig
def test_config_is_frozen_keyword_only_and_holds_the_defaults() -> None:
    config = FinetuneConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.learning_rate = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        FinetuneConfig(10)  # type: ignore[misc]
    assert {
        f.name: f.default for f in dataclasses.fields(FinetuneConfig)
    }.items() <= DEFAULTS.items()
    assert DEFAULTS["learning_rate"] == "auto" and DEFAULTS["auto_max_length_cpu"] == 192
    assert DEFAULTS["max_minutes"] == 30.0 and DEFAULTS["holdout"] == "auto"
    assert FinetuneConfig(loss=None).loss == "auto"
    assert FinetuneConfig(epochs=3.0).epochs == 3 and type(FinetuneConfig(epochs=3.0).epochs) is int


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"epochs": 1.5}, TypeError, "epochs must be an int"),
        ({"seed": True}, TypeError, "seed must be an int"),
        ({"learning_rate": 0}, ValueError, "learning_rate must be a finite number > 0"),
        ({"learning_rate": float("nan")}, ValueError, "learning_rate"),
        ({"head_learning_rate": -1.0}, ValueError, "head_learning_rate"),
        ({"warmup_ratio": 1.0}, ValueError, r"warmup_ratio must be within \[0, 1\)"),
        ({"distill_weight": 2.0}, ValueError, r"distill_weight must be within \[0, 1\]"),
        ({"max_minutes": 0}, ValueError, "max_minutes must be > 0"),
        ({"max_minutes": "5"}, TypeError, "max_minutes must be a number"),
        ({"max_steps": 0}, ValueError, "max_steps must be >= 1"),
        ({"max_length": True}, ValueError, "max_length"),
        ({"loss": "hinge"}, ValueError, "loss must be one of"),
        ({"loss": 3}, TypeError, "loss must be"),
        ({"precision": "fp8"}, ValueError, "precision"),
        ({"lora": "yes"}, TypeError, "lora"),
        ({"checkpoint_dir": 3}, TypeError, "checkpoint_dir"),
    ],
)
def test_config_errors_name_the_option(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        FinetuneConfig(**kwargs)


def test_engine_signature_lists_every_option(tiny_bert: Path, tmp_path: Path) -> None:
    from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine

    params = inspect.signature(CrossEncoderFinetuneEngine).parameters
    assert list(params)[:9] == [
        "dataset", "model_id", "model_output_path", "batch_size", "val_dataset", "loss",
        "epochs", "show_progress_bar", "evaluation_steps",
    ]  # fmt: skip
    assert params["learning_rate"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["learning_rate"].default == "auto"
    assert {f.name for f in dataclasses.fields(FinetuneConfig)} <= set(params)
    with pytest.raises(TypeError, match="learning_rte"):
        _engine(tiny_bert, tmp_path / "o", learning_rte=1e-4)


# ------------------------------------------------------------------ the facade's behaviour
def test_finetune_overrides_apply_to_one_run_only(tiny_bert: Path, tmp_path: Path) -> None:
    engine = _engine(tiny_bert, tmp_path / "out", loss="bce")
    assert engine.max_steps is None and engine.config.loss == "bce"
    result = engine.finetune(max_steps=1)
    assert result.global_step == 1
    assert engine.max_steps is None and engine.config.max_steps is None  # not kept
    with pytest.raises(ValueError, match="max_minutes must be > 0"):
        engine.finetune(max_minutes=0)  # overrides are checked like constructor arguments
    # an option set on the engine is checked and kept
    engine.logging_steps = 3
    assert engine.config.logging_steps == 3
    with pytest.raises(ValueError, match="logging_steps"):
        engine.logging_steps = 0


def test_push_to_hub_without_repo_id_is_a_value_error(tiny_bert: Path, tmp_path: Path) -> None:
    engine = _engine(tiny_bert, tmp_path / "out", loss="bce")
    for missing in (None, "", "  "):
        with pytest.raises(ValueError, match="repo_id"):
            engine.push_to_hub(missing)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="finetune"):
        engine.push_to_hub("me/model")


@pytest.mark.parametrize(
    ("value", "offline"),
    [("1", True), ("on", True), ("TRUE", True), ("yes", True), ("0", False), ("", False)],
)
def test_hub_offline_reads_the_environment(monkeypatch, value: str, offline: bool) -> None:
    from bge_rerank_plugins.loading import hub_offline

    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is offline


def test_the_device_is_picked_and_checked_by_loading(tiny_bert: Path, tmp_path: Path) -> None:
    from bge_rerank_plugins.loading import resolve_device

    engine = _engine(tiny_bert, tmp_path / "out", loss="bce")
    assert engine.device == resolve_device(None)
    with pytest.raises(ValueError, match=r"device='gpu'.*did you mean device='cuda'"):
        _engine(tiny_bert, tmp_path / "a", device="gpu")
    with pytest.raises(TypeError, match="device must be a string"):
        _engine(tiny_bert, tmp_path / "b", device=0)


def test_training_length_respects_the_models_position_limit(
    tiny_bert: Path, tmp_path: Path
) -> None:
    """A tokenizer without a real limit (the 1e30 sentinel) and 40 positions: at most 40."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_bert)
    config.max_position_embeddings = 40
    folder = tmp_path / "short"
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    tokenizer.model_max_length = int(1e30)
    tokenizer.save_pretrained(folder)
    engine = _engine(folder, tmp_path / "out", loss="bce", max_length=64)
    assert engine._max_length == 40
    assert _engine(folder, tmp_path / "auto", loss="bce")._max_length <= 40


def test_llama_index_samples_are_parsed_by_data_py_for_every_loss(
    tiny_bert: Path, tmp_path: Path
) -> None:
    bad = [*ROWS, {"query": "q", "context": "  ", "score": 1}]
    for loss in ("bce", "softmax"):
        with pytest.raises(ValueError, match=r"dataset\[4\]: field 'context' is empty"):
            _engine(tiny_bert, tmp_path / loss, bad, loss=loss)
    soft = [{**r, "score": 0.7 if r["score"] else 0.1} for r in ROWS]
    engine = _engine(tiny_bert, tmp_path / "soft", soft, loss="bce")
    assert sorted(engine.train_dataset["label"]) == [0.1, 0.1, 0.7, 0.7]  # own scores kept


# ------------------------------------------------------------------ structure
@pytest.mark.parametrize("stem", FINETUNE_MODULES)
def test_no_private_names_imported_across_modules(stem: str) -> None:
    tree = ast.parse((SRC / "finetune" / f"{stem}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"finetune/{stem}.py imports {private} from {node.module}"


@pytest.mark.parametrize("stem", [s for s in FINETUNE_MODULES if s != "data"])
def test_finetune_modules_stay_under_400_lines(stem: str) -> None:
    lines = (SRC / "finetune" / f"{stem}.py").read_text().count("\n")
    assert lines <= 400, f"finetune/{stem}.py has {lines} lines"


def test_trainer_parts_are_module_level_classes() -> None:
    pytest.importorskip("sentence_transformers")
    from bge_rerank_plugins.finetune import trainer

    for cls in (trainer.RerankerTrainer, trainer.TimeBudgetCallback):
        assert cls.__qualname__ == cls.__name__  # not defined inside a function
    budget = trainer.TimeBudgetCallback(None)
    assert budget.stopped is False
    source = inspect.getsource(trainer.RerankerTrainer.create_scheduler)
    assert "1.0 - 0.0" not in source


def test_importing_the_engine_loads_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, bge_rerank_plugins.finetune.engine, bge_rerank_plugins.finetune.recipe, "
        "bge_rerank_plugins.tokenization; print('torch' in sys.modules)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False", out.stderr


def test_tokenization_unknown_token_rate() -> None:
    class Tok:
        unk_token_id = 1

        def __call__(self, texts, add_special_tokens, truncation, max_length):
            return {"input_ids": [[1, 2, 1, 3] for _ in texts]}

    assert tokenization.unknown_token_rate(Tok(), ["a", "b"]) == 0.5
    assert tokenization.unknown_token_rate(Tok(), []) == 0.0
