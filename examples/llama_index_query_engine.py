"""LlamaIndex query engine with BGEReranker as a node postprocessor, fully offline.

    python examples/llama_index_query_engine.py                        # BAAI/bge-reranker-v2-m3
    python examples/llama_index_query_engine.py --model ./minilm-ce    # any local cross-encoder
    python examples/llama_index_query_engine.py --query "..." --top-n 2

The index uses a small bag-of-words embedding defined below and the answer comes from LlamaIndex's
MockLLM, so no API key and no embedding model are needed: the point is the reranking step. The
retriever returns 10 candidates, the reranker keeps the best --top-n.
"""

from __future__ import annotations

import argparse
import math
import re
import time
import zlib

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import MockLLM

from bge_rerank_plugins.llama_index import BGEReranker

DOCUMENTS = [
    ("Giant panda", "Diet", "Giant pandas eat bamboo almost exclusively, up to 14 kg a day."),
    ("Giant panda", "Habitat", "Wild pandas live in mountain forests of central China."),
    ("Red panda", "Diet", "Red pandas eat bamboo leaves, fruit, insects and bird eggs."),
    ("Pandas (software)", "Overview", "pandas is a Python library for tabular data analysis."),
    ("Pandas (software)", "DataFrame", "A pandas DataFrame holds labelled columns of data."),
    ("Koala", "Diet", "Koalas feed on eucalyptus leaves, which are low in nutrients."),
    ("Polar bear", "Diet", "Polar bears hunt seals on the Arctic sea ice."),
    ("Brown bear", "Diet", "Brown bears eat berries, roots, fish and small mammals."),
    ("Bamboo", "Growth", "Some bamboo species grow almost a metre in a single day."),
    ("Bamboo", "Uses", "Bamboo is used for scaffolding, furniture and flooring."),
    ("Zoo", "Feeding", "Zoo keepers give pandas bamboo, apples and special biscuits."),
    ("China", "Geography", "Sichuan province is known for its mountains and spicy food."),
    ("Conservation", "Status", "The giant panda was moved from endangered to vulnerable."),
    ("Eucalyptus", "Chemistry", "Eucalyptus oil contains cineole, which is toxic in doses."),
]


class BagOfWordsEmbedding(BaseEmbedding):
    """A tiny deterministic embedding (hashed word counts) so the example runs offline."""

    dim: int = 256

    @classmethod
    def class_name(cls) -> str:
        return "BagOfWordsEmbedding"

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * self.dim
        for word in re.findall(r"[a-z]+", text.lower()):
            vector[zlib.crc32(word.encode()) % self.dim] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="BAAI/bge-reranker-v2-m3", help="Hub id or DIR")
    parser.add_argument("--query", default="What do giant pandas eat?")
    parser.add_argument("--top-n", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best)")
    args = parser.parse_args()

    documents = [
        Document(text=text, metadata={"title": title, "section": section}, id_=f"doc-{i}")
        for i, (title, section, text) in enumerate(DOCUMENTS)
    ]
    index = VectorStoreIndex.from_documents(documents, embed_model=BagOfWordsEmbedding())
    reranker = BGEReranker(
        model=args.model,
        top_n=args.top_n,
        device=args.device,
        template="{title} / {section}\n{text}",  # score title and section with the text
        keep_retrieval_score=True,
    )
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=10, node_postprocessors=[reranker]
    )

    retrieved = index.as_retriever(similarity_top_k=10).retrieve(args.query)
    print(f"Query: {args.query}\n\nRetriever top 10 (bag of words):")
    for n in retrieved:
        print(f"  {n.score:.3f}  {n.node.metadata['title']}: {n.node.get_content()}")

    start = time.perf_counter()
    response = engine.query(args.query)
    elapsed = time.perf_counter() - start
    print(f"\nReranked sources ({args.model}, top {args.top_n}):")
    for n in response.source_nodes:
        retrieval = n.node.metadata["retrieval_score"]
        print(
            f"  score={n.score:.4f} (retrieval {retrieval:.3f})  "
            f"{n.node.metadata['title']}: {n.node.get_content()}"
        )
    print(f"\n{elapsed:.2f}s for the query, including loading the model on first use.")


if __name__ == "__main__":
    main()
