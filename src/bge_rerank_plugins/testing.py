"""Tiny random cross-encoders for tests and offline examples, built without any network.

Each model gets a tokenizer trained on the spot (``tokenizers``) on a small English and Chinese
corpus, so Chinese text tokenizes into real pieces rather than ``[UNK]``. The directories are
written with ``save_pretrained`` and load through the public API like any user's model.

>>> import tempfile
>>> from bge_rerank_plugins.testing import build_tiny_model
>>> path = build_tiny_model("bert", tempfile.mkdtemp())  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

__all__ = [
    "SAMPLE_OTHER",
    "SAMPLE_PASSAGES",
    "SAMPLE_QUERY",
    "TINY_CORPUS",
    "build_tiny_model",
    "free_loopback_port",
    "sample_pairs",
    "train_xlmr_tokenizer",
]

#: Text the tiny tokenizers are trained on: English and Chinese, the domains of the examples.
TINY_CORPUS: tuple[str, ...] = (
    "A cross-encoder reads the query and the passage together and returns one relevance score.",
    "Rerankers reorder the candidates that a fast first-stage retriever such as BM25 returns.",
    "What is the capital of China? Beijing is the capital of the People's Republic of China.",
    "Capital gains tax applies when you sell shares or property for more than you paid.",
    "The bank raised fresh capital from investors to meet the new regulatory requirements.",
    "My iPhone fell into water; rice does not fix it, switch it off and let it dry out.",
    "Apples are a fruit rich in fibre; an apple a day keeps the doctor away.",
    "Apple released a new iPhone with a faster chip and a better camera this autumn.",
    "The giant panda is a bear native to south central China that eats bamboo.",
    "pandas is a Python library for data analysis built around the DataFrame.",
    "Aspirin reduces fever and pain and lowers the risk of heart attack in some patients.",
    "Boundary layer transition on a flat plate at supersonic speed was measured in the tunnel.",
    "The vaccine trial enrolled four thousand adults and reported efficacy of ninety percent.",
    "Long documents are split into chunks and each chunk is scored against the query.",
    "Fine-tuning on domain data teaches the reranker the jargon of medicine, law and finance.",
    "Mixed precision halves memory use; bfloat16 keeps the range of float32.",
    "中国的首都是北京，北京是政治和文化中心。",
    "感冒了应该多喝水，注意休息，发烧时可以服用退烧药。",
    "糖尿病患者需要控制饮食，定期监测血糖水平。",
    "高血压的症状包括头痛、头晕和心悸，需要长期服药。",
    "苹果是一种水果，富含维生素和膳食纤维。",
    "手机掉进水里后应立即关机，不要充电。",
    "孕妇在怀孕期间需要补充叶酸和钙。",
    "小儿咳嗽可能由病毒感染引起，应及时就医。",
    "胃痛吃什么药好？常见的药物有奥美拉唑和铝碳酸镁。",
    "医生建议每天运动三十分钟以保持身体健康。",
    "numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024 3.14 50% and symbols: ( ) [ ] { } ? ! , . ; :",
)

#: The query and passages the scorer and family tests score against their references: the
#: answer, near misses sharing its words, a Chinese answer, an unrelated passage and two long
#: passages that a short ``max_length`` truncates.
SAMPLE_QUERY = "what is the capital of China"
SAMPLE_PASSAGES: tuple[str, ...] = (
    "Beijing is the capital of the People's Republic of China.",
    "Capital gains tax applies when you sell shares for more than you paid. " * 4,
    "中国的首都是北京，北京是政治和文化中心。",
    "Apples are a fruit rich in fibre.",
    "The bank raised fresh capital from investors " * 12,
)
#: A second query and its passages, for batches that mix queries.
SAMPLE_OTHER: tuple[str, tuple[str, ...]] = (
    "what do pandas eat",
    ("The giant panda eats bamboo.", "pandas is a Python library."),
)


def sample_pairs() -> list[tuple[str, str]]:
    """:data:`SAMPLE_QUERY` with each of :data:`SAMPLE_PASSAGES`, then :data:`SAMPLE_OTHER`'s
    query with each of its passages (seven pairs)."""
    query, passages = SAMPLE_OTHER
    return [(SAMPLE_QUERY, p) for p in SAMPLE_PASSAGES] + [(query, p) for p in passages]


ModelKind = Literal["bert", "xlm-roberta"]


def _train_bert_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1)
    tokenizer.train_from_iterator(list(TINY_CORPUS) * 3, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for test servers and torchrun)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train_xlmr_tokenizer(texts: Sequence[str], vocab_size: int):  # noqa: ANN201
    """An XLM-RoBERTa-style tokenizer (SentencePiece Unigram) trained on ``texts``.

    Also used by the benchmarks to give a random XLM-R-shaped model realistic token counts.
    Returns a ``transformers`` fast tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import XLMRobertaTokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    # No normalizer: transformers' XLMRobertaTokenizer drops it on reload anyway, and the
    # vocabulary must then hold the raw characters (full-width punctuation included).
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    # Every character of the corpus gets a piece, so nothing in it maps to <unk>.
    alphabet = sorted({c for line in texts for c in line})
    trainer = UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        unk_token="<unk>",
        initial_alphabet=alphabet,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    tokenizer.decoder = decoders.Metaspace()
    return XLMRobertaTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )


def build_tiny_model(
    kind: ModelKind,
    output_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    vocab_size: int = 600,
    num_labels: int = 1,
) -> Path:
    """Write a tiny random sequence-classification cross-encoder to ``output_dir``.

    Args:
        kind: ``"bert"`` (BERT-style, token type ids) or ``"xlm-roberta"`` (bge-reranker shape).
        output_dir: created if missing.
        seed: fixes the random weights, so two builds give identical scores.

    Returns:
        The directory, ready for ``CrossEncoderScorer(path)``.
    """
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        BertTokenizerFast,
        XLMRobertaConfig,
    )

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = {
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": hidden_size * 4,
        "num_labels": num_labels,
        # A wide init so random models still spread their scores apart.
        "initializer_range": 0.2,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
    }
    if kind == "bert":
        backend = _train_bert_tokenizer(vocab_size)
        tokenizer = BertTokenizerFast(
            tokenizer_object=backend,
            unk_token="[UNK]",
            sep_token="[SEP]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            mask_token="[MASK]",
            model_max_length=512,
        )
        config = BertConfig(
            vocab_size=backend.get_vocab_size(),
            max_position_embeddings=512,
            type_vocab_size=2,
            pad_token_id=backend.token_to_id("[PAD]"),
            **common,
        )
    elif kind == "xlm-roberta":
        tokenizer = train_xlmr_tokenizer(list(TINY_CORPUS) * 3, vocab_size)
        backend = tokenizer.backend_tokenizer
        config = XLMRobertaConfig(
            vocab_size=backend.get_vocab_size(),
            max_position_embeddings=514,
            type_vocab_size=1,
            pad_token_id=backend.token_to_id("<pad>"),
            bos_token_id=backend.token_to_id("<s>"),
            eos_token_id=backend.token_to_id("</s>"),
            **common,
        )
    else:
        raise ValueError(f"kind must be 'bert' or 'xlm-roberta', got {kind!r}")
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
