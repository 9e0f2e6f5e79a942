"""LlamaIndex node postprocessor: rerank retrieved nodes with a cross-encoder.

>>> from bge_rerank_plugins.llama_index import BGEReranker
>>> reranker = BGEReranker(top_n=3)  # nothing is loaded until the first query
>>> engine = index.as_query_engine(  # doctest: +SKIP
...     similarity_top_k=10, node_postprocessors=[reranker]
... )

The constructor names follow LlamaIndex's ``SentenceTransformerRerank`` and
``FlagEmbeddingReranker`` (``model``, ``top_n``, ``device``, ``use_fp16``,
``keep_retrieval_score``, ``trust_remote_code``), so switching is a change of class name.

What is mutated: nothing the caller passed in. The result holds new ``NodeWithScore`` objects
whose ``score`` is the reranker's score (a float); they wrap the same node objects as the input,
except with ``keep_retrieval_score=True``, where each returned node is a shallow copy with
``metadata["retrieval_score"]`` added (the stored node and its metadata dict are left as they
were).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from llama_index.core.bridge.pydantic import ConfigDict, Field, model_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from .adapter_options import RerankOptions

__all__ = ["BGEReranker"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)


class BGEReranker(RerankOptions, BaseNodePostprocessor):
    """Rerank nodes with a cross-encoder (default ``BAAI/bge-reranker-v2-m3``).

    Args:
        model: Hub id or local directory (default ``BAAI/bge-reranker-v2-m3``).
        top_n: nodes to return, best first (default 3; ``None`` keeps all that pass the
            threshold).
        score_threshold: drop nodes scoring below it.
        normalize: sigmoid scores in [0, 1] (default) or raw logits.
        metadata_mode: which metadata ``node.get_content`` includes in the scored text
            (default ``MetadataMode.NONE``: the node text only).
        template: score a text built from metadata fields and the node text instead, e.g.
            ``"{title}\\n{section}\\n{text}"`` or ``["title", "text"]``.
        keep_retrieval_score: copy the retriever's score to ``metadata["retrieval_score"]``.
        device: how the model runs; this and ``dtype``, ``use_fp16``, ``max_length``,
            ``query_max_length``, ``batch_size``, ``token_budget``, ``cache_size``,
            ``backend``, ``revision`` and ``trust_remote_code`` are as for
            :class:`~bge_rerank_plugins.config.ScorerConfig`.
        scorer: an existing :class:`~bge_rerank_plugins.CrossEncoderScorer` to share.

    Example:
        >>> reranker = BGEReranker(model="BAAI/bge-reranker-v2-m3", top_n=2)
        >>> reranker.to_dict()["top_n"]
        2
        >>> reranker.postprocess_nodes(nodes, query_str="what is a panda?")  # doctest: +SKIP
        [NodeWithScore(node=..., score=0.98), NodeWithScore(node=..., score=0.41)]
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    keep_retrieval_score: bool = Field(
        default=False,
        description="Keep the retriever's score in the returned node's "
        "metadata['retrieval_score'] (on a shallow copy of the node).",
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.NONE,
        description="Metadata included by node.get_content() in the scored text when no "
        "template is given.",
    )

    @model_validator(mode="after")
    def _one_text_source(self) -> BGEReranker:
        if self.template is not None and self.metadata_mode != MetadataMode.NONE:
            raise ValueError(
                f"metadata_mode={self.metadata_mode.name} and template both choose the text to "
                "score; pass only one (a template renders metadata fields itself)."
            )
        return self

    @classmethod
    def class_name(cls) -> str:
        return "BGEReranker"

    # ------------------------------------------------------------------ translation
    def node_text(self, node: NodeWithScore, index: int | None = None) -> str:
        """The text scored for ``node``: its content, or the template over text and metadata."""
        if self.template is None:
            return node.node.get_content(metadata_mode=self.metadata_mode)
        return self.record_text(node.node.get_content(MetadataMode.NONE), node.node.metadata, index)

    def _texts(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> tuple[str, list[str]]:
        if query_bundle is None:
            raise ValueError(
                "BGEReranker needs a query: call postprocess_nodes(nodes, query_str=...) or "
                "pass query_bundle=QueryBundle(...)."
            )
        if not isinstance(query_bundle.query_str, str):
            raise TypeError(
                f"the query must be a string, got {type(query_bundle.query_str).__name__}"
            )
        if isinstance(nodes, (str, bytes, NodeWithScore)) or not isinstance(nodes, Sequence):
            raise TypeError(
                f"nodes must be a list of NodeWithScore, got {type(nodes).__name__}"
                + ("; wrap it in a list." if isinstance(nodes, (str, NodeWithScore)) else ".")
            )
        for i, node in enumerate(nodes):
            if not isinstance(node, NodeWithScore):
                if isinstance(node, BaseNode):
                    hint = "wrap it: NodeWithScore(node=node)"
                elif isinstance(node, str):
                    hint = "wrap each string: NodeWithScore(node=TextNode(text=text))"
                else:
                    hint = "pass what a LlamaIndex retriever returns"
                raise TypeError(
                    f"nodes[{i}] is a {type(node).__name__}, not a NodeWithScore; {hint}. To "
                    "score plain strings, use CrossEncoderScorer.rank."
                )
        return query_bundle.query_str, [self.node_text(n, i) for i, n in enumerate(nodes)]

    def _results(
        self, nodes: list[NodeWithScore], ranked: list[tuple[int, float]]
    ) -> list[NodeWithScore]:
        out = []
        for index, score in ranked:
            original = nodes[index]
            node = original.node
            if self.keep_retrieval_score:
                node = node.model_copy(
                    update={"metadata": {**node.metadata, "retrieval_score": original.score}}
                )
            out.append(NodeWithScore(node=node, score=float(score)))
        return out

    def _start(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> dict[Any, Any]:
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=len(nodes) if self.top_n is None else self.top_n,
                model_name=self.model,
            )
        )
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: self.top_n,
        }

    # ------------------------------------------------------------------ postprocessing
    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query, texts = self._texts(nodes, query_bundle)
        if not nodes:
            return []
        with self._reranking(nodes, query_bundle) as finish:
            return finish(self.rank_texts(query, texts))

    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        """Like the sync path, but the model runs in a worker thread, off the event loop."""
        query, texts = self._texts(nodes, query_bundle)
        if not nodes:
            return []
        with self._reranking(nodes, query_bundle) as finish:
            return finish(await asyncio.to_thread(self.rank_texts, query, texts))

    @contextmanager
    def _reranking(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> Iterator[Callable[[list[tuple[int, float]]], list[NodeWithScore]]]:
        """The events around one rerank, shared by the sync and async paths.

        Yields ``finish(ranked) -> nodes``, which builds the results and closes the callback
        event; the instrumentation end event follows once the callback event has closed.
        """
        payload = self._start(nodes, query_bundle)  # type: ignore[arg-type]
        done: list[list[NodeWithScore]] = []
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:

            def finish(ranked: list[tuple[int, float]]) -> list[NodeWithScore]:
                done.append(self._results(nodes, ranked))
                event.on_end(payload={EventPayload.NODES: done[-1]})
                return done[-1]

            yield finish
        dispatcher.event(ReRankEndEvent(nodes=done[-1]))
