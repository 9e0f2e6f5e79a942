"""Serve a reranker over HTTP and call it the way existing clients do (TEI, Cohere, LlamaIndex).

Self-contained demo: starts the server on 127.0.0.1 in this process (the MiniLM cross-encoder by
default, or --model DIR), calls every endpoint, prints the rankings, and stops:

    python examples/serve.py
    python examples/serve.py --model BAAI/bge-reranker-v2-m3

Client only, against a server you started with ``bge-rerank serve --model ... --port 8080``:

    python examples/serve.py --url http://127.0.0.1:8080 [--api-key KEY]

Needs the serve extra (``pip install "bge-rerank-plugins[serve]"``); the cohere SDK and the
LlamaIndex TEI postprocessor parts run when those packages are installed.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

QUERY = "What do giant pandas eat?"
DOCUMENTS = [
    "Pandas is a Python library for working with tabular data.",
    "The giant panda's diet is over 99% bamboo, eaten for up to 14 hours a day.",
    "Red pandas live in the eastern Himalayas and also feed on bamboo.",
    "Beijing Zoo has housed giant pandas since the 1950s.",
]


def call_tei(url: str, headers: dict[str, str]) -> None:
    """POST /rerank with a plain HTTP client, in the text-embeddings-inference shape."""
    r = httpx.post(
        f"{url}/rerank",
        json={"query": QUERY, "texts": DOCUMENTS, "return_text": True},
        headers=headers,
        timeout=60,
    )
    r.raise_for_status()
    print("TEI /rerank:")
    for item in r.json():
        print(f"  {item['score']:.4f}  [{item['index']}] {item['text']}")


def call_cohere(url: str, api_key: str) -> None:
    """The official cohere SDK, pointed at this server with base_url."""
    try:
        import cohere
    except ImportError:
        print("cohere SDK not installed; skipping (pip install cohere)")
        return
    v2 = cohere.ClientV2(api_key=api_key, base_url=url)
    response = v2.rerank(model="bge-reranker", query=QUERY, documents=DOCUMENTS, top_n=2)
    print("cohere ClientV2 /v2/rerank (top 2):")
    for result in response.results:
        print(f"  {result.relevance_score:.4f}  [{result.index}] {DOCUMENTS[result.index]}")
    v1 = cohere.Client(api_key=api_key, base_url=url)
    docs = [{"text": d, "id": f"doc-{i}"} for i, d in enumerate(DOCUMENTS)]
    response = v1.rerank(query=QUERY, documents=docs, top_n=1, return_documents=True)
    best = response.results[0]
    print(
        f"cohere Client /v1/rerank best: {best.document.text!r} (score {best.relevance_score:.4f})"
    )


def call_llama_index(url: str, api_key: str | None) -> None:
    """LlamaIndex's TEI rerank postprocessor, unchanged."""
    try:
        from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
        from llama_index.postprocessor.tei_rerank import TextEmbeddingInference
    except ImportError:
        print("llama-index-postprocessor-tei-rerank not installed; skipping")
        return
    reranker = TextEmbeddingInference(
        base_url=url, top_n=2, auth_token=f"Bearer {api_key}" if api_key else None
    )
    nodes = [NodeWithScore(node=TextNode(text=d)) for d in DOCUMENTS]
    print("LlamaIndex TextEmbeddingInference (top 2):")
    for node in reranker.postprocess_nodes(nodes, QueryBundle(QUERY)):
        print(f"  {node.score:.4f}  {node.node.get_content()}")


def run_clients(url: str, api_key: str | None) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    call_tei(url, headers)
    call_cohere(url, api_key or "unused")
    call_llama_index(url, api_key)
    health = httpx.get(f"{url}/health").json()
    metrics = httpx.get(f"{url}/metrics").text
    pairs = [line for line in metrics.splitlines() if line.startswith("bge_rerank_pairs_scored")]
    print(f"/health: {health}; {pairs[0] if pairs else ''}")


def serve_in_background(model: str, api_key: str | None):
    """Start uvicorn on a free loopback port in a daemon thread; return (server, url)."""
    import uvicorn

    from bge_rerank_plugins.server import ServerConfig, create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(ServerConfig(model=model, api_key=api_key))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become healthy within 300 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="call this running server instead")
    parser.add_argument("--model", default=None, help="model to serve (default: MiniLM demo)")
    parser.add_argument("--api-key", default=os.environ.get("BGE_RERANK_API_KEY"))
    args = parser.parse_args()
    if args.url:
        run_clients(args.url.rstrip("/"), args.api_key)
        return 0
    model = args.model
    if model is None:
        from bge_rerank_plugins.minilm import build_minilm_cross_encoder

        model = str(build_minilm_cross_encoder(Path(tempfile.gettempdir()) / "bge-demo-minilm"))
        print("(MiniLM encoder with an untrained head: rankings are illustrative only)")
    server, url = serve_in_background(model, args.api_key)
    print(f"serving {model} at {url}")
    try:
        run_clients(url, args.api_key)
    finally:
        server.should_exit = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
