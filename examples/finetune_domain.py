"""Fine-tune a cross-encoder reranker on a domain (SciFact) and compare it with the base model.

1. Training groups from the BEIR folder's train split: each query's relevant documents as
   positives, BM25 hard negatives (the folder's BM25 candidate lists, else BM25 over the corpus).
2. ``CrossEncoderFinetuneEngine`` with its defaults (grouped softmax loss, 1 positive + 3 hard
   negatives, encoder lr 2e-4, head lr 2e-3, max_length "auto") and a wall-clock budget.
3. Evaluation on the dev split: BM25 order vs base vs fine-tuned, reranking the BM25 top 30.

Run on this machine (about 30 minutes of training on a CPU, then a few minutes of evaluation):

    python examples/finetune_domain.py

Environment variables (the notebook test uses them to run in seconds on a tiny model):
``BGE_RERANK_EXAMPLE_DATA`` (BEIR folder, default ``../shared/data/scifact``),
``BGE_RERANK_EXAMPLE_MODEL`` (base model; default: the MiniLM cross-encoder built locally),
``BGE_RERANK_EXAMPLE_MINUTES`` (training budget, default 30),
``BGE_RERANK_EXAMPLE_TRAIN_QUERIES`` / ``BGE_RERANK_EXAMPLE_EVAL_QUERIES`` (limits, default all),
``BGE_RERANK_EXAMPLE_OUT`` (output folder, default ``runs/finetune-domain``).
"""
# ruff: noqa: E402  (notebook-style cells import where they are used)

# %% [markdown]
# # Fine-tune a reranker on your domain
# Settings come from environment variables so the same code runs the real experiment and a
# seconds-long smoke test.

# %%
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(os.environ.get("BGE_RERANK_EXAMPLE_DATA", "../shared/data/scifact"))
OUT = Path(os.environ.get("BGE_RERANK_EXAMPLE_OUT", "runs/finetune-domain"))
MINUTES = float(os.environ.get("BGE_RERANK_EXAMPLE_MINUTES", "30"))
TRAIN_QUERIES = int(os.environ.get("BGE_RERANK_EXAMPLE_TRAIN_QUERIES", "0")) or None
EVAL_QUERIES = int(os.environ.get("BGE_RERANK_EXAMPLE_EVAL_QUERIES", "0")) or None
MODEL = os.environ.get("BGE_RERANK_EXAMPLE_MODEL")
if not MODEL:
    from bge_rerank_plugins.minilm import build_minilm_cross_encoder

    MODEL = str(build_minilm_cross_encoder(OUT.parent / "minilm-base"))
print(f"data={DATA} model={MODEL} budget={MINUTES} min")

# %% [markdown]
# ## 1. Training data: positives from the qrels, BM25 hard negatives

# %%
from bge_rerank_plugins.finetune.data import groups_from_beir
from bge_rerank_plugins.finetune.negatives import NegativeMiningConfig

groups = groups_from_beir(
    DATA,
    "train",
    negatives=NegativeMiningConfig(num_negatives=30, rank_range=(1, 30), sampling="top"),
    max_queries=TRAIN_QUERIES,
)
print(len(groups), "training queries;", groups[0].query[:80])

# %% [markdown]
# ## 2. Fine-tune with the engine's defaults and a time budget

# %%
from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine

engine = CrossEncoderFinetuneEngine(
    groups,
    model_id=MODEL,
    model_output_path=str(OUT / "model"),
    batch_size=8,
    epochs=10,
    max_minutes=MINUTES,
)
result = engine.finetune()
print(f"{result.global_step} steps in {result.train_seconds / 60:.1f} min")

# %% [markdown]
# ## 3. Evaluate on dev: BM25 order, base model, fine-tuned model (BM25 top 30 reranked)

# %%
from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.evaluation import evaluate_models

comparison = evaluate_models(
    {"base": MODEL, "fine-tuned": str(OUT / "model")},
    DATA,
    "dev",
    top_k=30,
    max_queries=EVAL_QUERIES,
    # score at the training length: far past it ranking gets worse (docs/finetuning.md)
    scorer_factory=lambda model: CrossEncoderScorer(model, max_length=result.max_length),
)
print(comparison.to_markdown())
