"""Distributed fine-tuning: two CPU processes (gloo) launched by torchrun train one model.

The engine trains through the Hugging Face Trainer, which reads the environment torchrun sets;
this proves the launch documented on the "Scaling out" page works end to end on CPU: both ranks
join one process group, their weights stay identical (gradients are averaged), and only the
main process writes the model folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bge_rerank_plugins.testing import free_loopback_port

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine

    model, out, report = sys.argv[1], sys.argv[2], sys.argv[3]
    topics = [
        ("what do pandas eat", "The giant panda eats bamboo.", "Capital gains tax on shares."),
        ("capital of China", "Beijing is the capital of China.", "Apples are rich in fibre."),
        ("iphone in water", "Switch the wet iPhone off.", "The bank raised capital."),
        ("aspirin fever", "Aspirin reduces fever and pain.", "Boundary layer on a plate."),
    ]
    data = [{"query": q, "pos_doc": p, "neg_doc": n} for q, p, n in topics]
    engine = CrossEncoderFinetuneEngine(
        data, model_id=model, model_output_path=out, batch_size=1, num_negatives=1,
        max_steps=3, learning_rate=1e-3, show_progress_bar=False, device="cpu",
    )
    before = float(sum(p.detach().double().sum() for p in engine.model.parameters()))
    engine.finetune()
    after = sum(p.detach().double().sum() for p in engine.model.parameters())
    rank = int(os.environ["RANK"])
    with open(f"{report}.{rank}", "w") as f:
        json.dump({
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "before": before,
            "after": float(after),
        }, f)
    """
)


def test_two_process_gloo_fine_tuning_with_torchrun(tiny_bert: Path, tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out, report = tmp_path / "model", tmp_path / "report"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_loopback_port()),
        str(script),
        str(tiny_bert),
        str(out),
        str(report),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads(Path(f"{report}.{rank}").read_text()) for rank in (0, 1)]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in ranks)
    assert ranks[0]["after"] != ranks[0]["before"]  # it trained
    assert ranks[0]["after"] == pytest.approx(ranks[1]["after"], rel=1e-9)  # one model (DDP)
    assert (out / "config.json").is_file()
    assert not list(tmp_path.glob(".model.*"))  # no leftover temporary folder of a second writer

    from bge_rerank_plugins import CrossEncoderScorer

    scores = CrossEncoderScorer(str(out)).score("what do pandas eat", ["bamboo", "taxes"])
    assert len(scores) == 2
