"""LangChain ContextualCompressionRetriever with BGERerankCompressor, fully offline.

    python examples/langchain_compression.py                        # BAAI/bge-reranker-v2-m3
    python examples/langchain_compression.py --model ./minilm-ce    # any local cross-encoder
    python examples/langchain_compression.py --query "..." --top-n 2 --threshold 0.1

Needs langchain-core and langchain-classic (ContextualCompressionRetriever lives there in
LangChain 1.x). The vector store uses a small bag-of-words embedding defined below, so nothing but
the reranker is downloaded; the last step shows the prompt an LLM would receive in an LCEL chain.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import zlib

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from bge_rerank_plugins.langchain import BGERerankCompressor

DOCUMENTS = [
    ("Giant panda", "Giant pandas eat bamboo almost exclusively, up to 14 kg a day."),
    ("Giant panda", "Wild pandas live in mountain forests of central China."),
    ("Red panda", "Red pandas eat bamboo leaves, fruit, insects and bird eggs."),
    ("Pandas (software)", "pandas is a Python library for tabular data analysis."),
    ("Pandas (software)", "A pandas DataFrame holds labelled columns of data."),
    ("Koala", "Koalas feed on eucalyptus leaves, which are low in nutrients."),
    ("Polar bear", "Polar bears hunt seals on the Arctic sea ice."),
    ("Brown bear", "Brown bears eat berries, roots, fish and small mammals."),
    ("Bamboo", "Some bamboo species grow almost a metre in a single day."),
    ("Bamboo", "Bamboo is used for scaffolding, furniture and flooring."),
    ("Zoo", "Zoo keepers give pandas bamboo, apples and special biscuits."),
    ("Conservation", "The giant panda was moved from endangered to vulnerable."),
]


class BagOfWordsEmbeddings(Embeddings):
    """A tiny deterministic embedding (hashed word counts) so the example runs offline."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * self.dim
        for word in re.findall(r"[a-z]+", text.lower()):
            vector[zlib.crc32(word.encode()) % self.dim] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="BAAI/bge-reranker-v2-m3", help="Hub id or DIR")
    parser.add_argument("--query", default="What do giant pandas eat?")
    parser.add_argument("--top-n", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=None, help="drop scores below it")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best)")
    args = parser.parse_args()

    store = InMemoryVectorStore(BagOfWordsEmbeddings())
    store.add_documents(
        [
            Document(page_content=text, metadata={"title": title}, id=f"doc-{i}")
            for i, (title, text) in enumerate(DOCUMENTS)
        ]
    )
    compressor = BGERerankCompressor(
        model=args.model,
        top_n=args.top_n,
        score_threshold=args.threshold,
        device=args.device,
        template="{title}\n{text}",  # score the title together with the page content
    )
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor,
        base_retriever=store.as_retriever(search_kwargs={"k": 10}),
    )

    print(f"Query: {args.query}\n\nReranked ({args.model}, top {args.top_n}):")
    reranked = retriever.invoke(args.query)
    for doc in reranked:
        score = doc.metadata["relevance_score"]
        print(f"  relevance_score={score:.4f}  {doc.metadata['title']}: {doc.page_content}")

    again = asyncio.run(retriever.ainvoke(args.query))
    print(f"\nasync ainvoke gives the same documents: {again == reranked}")

    prompt = ChatPromptTemplate.from_template(
        "Answer from the context.\n\nContext:\n{context}\n\nQuestion: {question}"
    )
    chain = {
        "context": retriever | (lambda docs: "\n".join(d.page_content for d in docs)),
        "question": RunnablePassthrough(),
    } | prompt
    print("\nPrompt an LLM would receive in an LCEL chain:\n")
    print(chain.invoke(args.query).to_string())


if __name__ == "__main__":
    main()
