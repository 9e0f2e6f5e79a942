"""Tiny random causal-LM rerankers for tests and benchmarks, built without any network.

Two shapes, each with a byte-level BPE tokenizer trained on the spot
(:data:`~bge_rerank_plugins.testing.TINY_CORPUS` and the rerankers' prompt texts):

- ``"gemma"``: a ``GemmaForCausalLM`` with a ``<bos>`` token, the layout of
  ``BAAI/bge-reranker-v2-gemma`` (FlagEmbedding's ``FlagLLMReranker`` reads the logit of ``Yes``);
- ``"qwen3"``: a ``Qwen3ForCausalLM`` with the ChatML special tokens and a chat template that
  renders a ``query`` and a ``document`` message into the Qwen3-Reranker prompt, saved as a
  sentence-transformers v6 CrossEncoder folder (``modules.json``: Transformer + LogitScore over
  ``yes`` / ``no``), the layout ``Qwen/Qwen3-Reranker-0.6B`` has for sentence-transformers.

>>> import tempfile
>>> from bge_rerank_plugins.testing_causal import build_tiny_causal_lm
>>> path = build_tiny_causal_lm("qwen3", tempfile.mkdtemp())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from .runtime.causal_prompts import QWEN3_RERANKER_TEMPLATE
from .testing import TINY_CORPUS

__all__ = [
    "QWEN3_RERANKER_TEMPLATE",
    "CausalKind",
    "build_tiny_causal_lm",
    "copy_with_config",
    "copy_without_weight",
    "fast_tokenizer",
    "save_remote_code_model",
    "train_bpe_tokenizer",
    "train_gemma_tokenizer",
]

CausalKind = Literal["gemma", "qwen3"]

# The tiny Qwen3-shaped tokenizer carries the library's built-in Qwen3-Reranker chat template
# (``runtime.causal_prompts.QWEN3_RERANKER_TEMPLATE``): a ``system`` message (the prompt) is the
# instruction, the ``query`` and ``document`` roles carry the pair.
_PROMPT_TEXTS = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the "
    "query by providing a prediction of either 'Yes' or 'No'.",
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".',
    "Given a web search query, retrieve relevant passages that answer the query",
    "A: B: <Instruct>: <Query>: <Document>: yes no Yes No system user assistant",
)


def train_bpe_tokenizer(
    vocab_size: int, specials: list[str], words: list[str], texts: tuple[str, ...] = ()
) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on the tiny corpus and ``texts``.

    ``specials`` become special tokens, ``words`` ordinary added tokens (so ``"yes"`` is one
    token wherever it appears). No post-processor: nothing is added around a text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
    )
    tokenizer.train_from_iterator(list(TINY_CORPUS + _PROMPT_TEXTS + texts) * 3, trainer=trainer)
    tokenizer.add_tokens(words)
    return tokenizer


def fast_tokenizer(
    backend: Any,
    *,
    eos: str,
    pad: str,
    bos: str | None = None,
    unk: str | None = None,
    model_max_length: int = 8192,
) -> Any:
    """A left-padding ``PreTrainedTokenizerFast`` over a trained ``backend`` (a
    :func:`train_bpe_tokenizer` result) with these special tokens (``bos`` and ``unk`` only
    where given)."""
    from transformers import PreTrainedTokenizerFast

    roles = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side="left",
        model_max_length=model_max_length,
        **{role: token for role, token in roles.items() if token is not None},
    )


def train_gemma_tokenizer(
    vocab_size: int, texts: tuple[str, ...] = ()
) -> tuple[Any, dict[str, int]]:
    """A Gemma-style tokenizer (``<pad>``, ``<eos>``, ``<bos>``, ``<unk>`` at Gemma's ids 0 to
    3; ``Yes`` and ``No`` one token each) trained on the tiny corpus and ``texts``, and the ids
    of its four special tokens by name."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    backend = train_bpe_tokenizer(vocab_size, specials, ["Yes", "No"], texts)
    tokenizer = fast_tokenizer(backend, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>")
    return tokenizer, {name: backend.token_to_id(name) for name in specials}


def save_remote_code_model(
    out: Path, model: Any, saved: dict[str, Any], tokenizer: Any, code: Path, files: tuple[str, ...]
) -> Path:
    """Write a FlagEmbedding model in its BAAI folder layout: the weights with ``safetensors``
    directly (its classes' list ``_tied_weights_keys`` breaks ``save_pretrained`` under
    ``transformers`` 5), ``saved`` as ``config.json``, the tokenizer and the remote-code
    ``files`` copied from ``code``."""
    from safetensors.torch import save_file

    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(saved, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(out)
    for name in files:
        shutil.copy(code / name, out / name)
    return out


def copy_with_config(model: Path, out: Path, changes: dict[str, Any]) -> Path:
    """A copy of the model folder ``model`` at ``out`` whose ``config.json`` has ``changes``."""
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


def copy_without_weight(model: Path, out: Path, key: str) -> Path:
    """A copy of the model folder ``model`` at ``out`` whose ``model.safetensors`` lacks the
    tensor ``key``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, out)
    weights = load_file(str(out / "model.safetensors"))
    del weights[key]
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def build_tiny_causal_lm(
    kind: CausalKind,
    output_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int = 800,
    model_vocab_size: int | None = None,
    texts: tuple[str, ...] = (),
) -> Path:
    """Write a tiny random causal-LM reranker to ``output_dir`` and return the directory.

    Args:
        kind: ``"gemma"`` (BGE decoder-only layout) or ``"qwen3"`` (sentence-transformers v6
            CrossEncoder layout with a chat template and a LogitScore module).
        seed: fixes the random weights.
        vocab_size: the tokenizer's BPE vocabulary; ``model_vocab_size`` (default: the
            tokenizer's size) sets the embedding and LM-head rows, e.g. 151936 for the real
            Qwen3 head cost in a benchmark.
        texts: more text to train the tokenizer on (a benchmark's passages).
    """
    import torch
    from transformers import (
        GemmaConfig,
        GemmaForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    head_dim = head_dim or max(8, hidden_size // num_heads)
    common = {
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "intermediate_size": intermediate_size or hidden_size * 3,
        "max_position_embeddings": 8192,
        # A wide init so random models still spread their scores apart.
        "initializer_range": 0.2,
        "tie_word_embeddings": True,
    }
    if kind == "gemma":
        tokenizer, ids = train_gemma_tokenizer(vocab_size, texts)
        config = GemmaConfig(
            vocab_size=model_vocab_size or len(tokenizer),
            pad_token_id=ids["<pad>"],
            bos_token_id=ids["<bos>"],
            eos_token_id=ids["<eos>"],
            **common,
        )
        model_class: Any = GemmaForCausalLM
    elif kind == "qwen3":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        backend = train_bpe_tokenizer(
            vocab_size, specials, ["yes", "no", "<think>", "</think>"], texts
        )
        tokenizer = fast_tokenizer(backend, eos="<|im_end|>", pad="<|endoftext|>")
        tokenizer.chat_template = QWEN3_RERANKER_TEMPLATE
        config = Qwen3Config(
            vocab_size=model_vocab_size or len(tokenizer),
            pad_token_id=backend.token_to_id("<|endoftext|>"),
            eos_token_id=backend.token_to_id("<|im_end|>"),
            **common,
        )
        model_class = Qwen3ForCausalLM
    else:
        raise ValueError(f"kind must be 'gemma' or 'qwen3', got {kind!r}")
    torch.manual_seed(seed)
    model = model_class(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if kind == "qwen3":
        _write_logit_score_layout(out)
    return out


def _write_logit_score_layout(out: Path) -> None:
    """Save the folder as a sentence-transformers v6 CrossEncoder (Transformer for
    text-generation, then LogitScore over ``yes`` / ``no``), written by sentence-transformers
    itself; without it installed the folder stays a plain causal LM."""
    try:
        from sentence_transformers import CrossEncoder
    except ImportError:
        return
    CrossEncoder(str(out), device="cpu").save_pretrained(str(out))
