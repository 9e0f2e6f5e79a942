"""LlamaIndex node postprocessor: rerank retrieved nodes with a cross-encoder.

>>> from bge_rerank_plugins.llama_index import BGEReranker
>>> reranker = BGEReranker(top_n=3)  # nothing is loaded until the first query
>>> engine = index.as_query_engine(  # doctest: +SKIP
...     similarity_top_k=10, node_postprocessors=[reranker]
... )

It replaces LlamaIndex's ``SentenceTransformerRerank`` and ``FlagEmbeddingReranker``: the
arguments have their names (``model``, ``top_n``, ``device``, ``use_fp16``,
``keep_retrieval_score``, ``trust_remote_code``) and it scores the same text, the node's
``get_content(metadata_mode=MetadataMode.EMBED)``. Scores are sigmoid probabilities, as
``SentenceTransformerRerank`` returns for a bge reranker; pass ``normalize=False`` for the raw
logits ``FlagEmbeddingReranker`` returns. Where a default differs (``top_n``, the default model,
half precision on CUDA) docs/llama_index.md's migration table says so, argument by argument.

The scorer may be local (a :class:`~bge_rerank_plugins.CrossEncoderScorer`, loaded from
``model`` on first use or shared as ``scorer=``) or remote: ``model="http://host:port"``, or
``scorer=`` any object with the scorer's ``score``/``rank`` API such as
``bge_rerank_plugins.remote.RemoteScorer``. The async path awaits a scorer's ``ascore`` when it
has one, so the event loop never blocks; otherwise the model runs in a worker thread.

Fusion and deadlines (:mod:`~bge_rerank_plugins.adapter_ranking`): ``fusion=`` fuses the
reranker's scores with the retriever's (``first_stage="score"``, the default, reads
``NodeWithScore.score``; ``"metadata:<key>"`` a metadata entry; ``"rank"`` the incoming order);
``timeout=`` seconds returns the first-stage order, marked ``reranked=False``, instead of
running late. ``NodeWithScore.score`` is then the fused (or reranker) score, and the node's
metadata says which score is which: ``reranker_score``, ``first_stage_score``,
``fused_score``, ``reranked`` (excluded from the LLM and embedding text).

What is mutated: nothing the caller passed in. The result holds new ``NodeWithScore`` objects
whose ``score`` is the reranker's score (a float); they wrap the same node objects as the input,
except with ``keep_retrieval_score=True`` (or ``fusion``/``timeout`` set), where each returned
node is a shallow copy with ``metadata["retrieval_score"]`` (or the score keys) added (the
stored node and its metadata dict are left as they were).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from llama_index.core.bridge.pydantic import ConfigDict, Field, model_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from .adapter_options import RerankOptions
from .adapter_ranking import SCORE_KEYS, Hit

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
        normalize: sigmoid scores in [0, 1] (default, as ``SentenceTransformerRerank`` gives for a
            bge reranker) or raw logits (``False``, as ``FlagEmbeddingReranker`` gives).
        metadata_mode: which metadata ``node.get_content`` includes in the scored text
            (default ``MetadataMode.EMBED``, what LlamaIndex's rerankers score: the metadata
            not excluded for embedding, as ``key: value`` lines, then the text;
            ``MetadataMode.NONE``: the node text only).
        template: score a text built from metadata fields and the node text instead, e.g.
            ``"{title}\\n{section}\\n{text}"`` or ``["title", "text"]`` (then the text is the
            template's, and ``metadata_mode`` is not used).
        keep_retrieval_score: copy the retriever's score to ``metadata["retrieval_score"]``.
        fusion: fuse with the first stage: a ``FusionConfig``, a dict of its fields, or
            ``"auto"`` (fitted into the model's calibration file); default ``None``.
        first_stage: where the first-stage score comes from: ``"score"`` (default,
            ``NodeWithScore.score``), ``"metadata:<key>"`` or ``"rank"`` (the incoming order).
            A node without one makes the call use the incoming order (one warning).
        timeout: seconds (default ``None``); past it, the first-stage order comes back with
            ``metadata["reranked"] = False`` (``score_threshold`` not applied), never an error.
        normalize: also ``"calibrated"``: probabilities from the model's calibration file.
        device: how the model runs; this and ``dtype``, ``use_fp16``, ``max_length``,
            ``query_max_length``, ``batch_size``, ``token_budget``, ``cache_size``,
            ``backend``, ``revision`` and ``trust_remote_code`` are as for
            :class:`~bge_rerank_plugins.config.ScorerConfig`.
        scorer: a scorer to use instead of loading ``model``: a
            :class:`~bge_rerank_plugins.CrossEncoderScorer` to share, or any object with its
            ``score``/``rank`` API (a ``bge_rerank_plugins.remote.RemoteScorer``). Never
            serialized. ``model="http://host:port"`` builds a ``RemoteScorer`` for that URL.

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
        default=MetadataMode.EMBED,
        description="Metadata included by node.get_content() in the scored text when no "
        "template is given (EMBED, as SentenceTransformerRerank and FlagEmbeddingReranker "
        "score; NONE: the node text only).",
    )

    @model_validator(mode="after")
    def _one_text_source(self) -> BGEReranker:
        if self.template is None:
            return self
        if "metadata_mode" not in self.model_fields_set:
            # The template chooses the text; record that metadata_mode plays no part, so the
            # serialized settings round-trip.
            self.__dict__["metadata_mode"] = MetadataMode.NONE
        elif self.metadata_mode != MetadataMode.NONE:
            raise ValueError(
                f"metadata_mode={self.metadata_mode.name} and template both choose the text to "
                "score; pass only one (a template renders metadata fields itself)."
            )
        return self

    @classmethod
    def class_name(cls) -> str:
        return "BGEReranker"

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> BGEReranker:
        """Rebuild a reranker from :meth:`to_dict` output (``from_json`` comes here too).

        A dict whose ``class_name`` is another class's (a ``SentenceTransformerRerank`` or
        ``FlagEmbeddingReranker`` saved by LlamaIndex) is refused: several defaults differ, so
        it would not mean the same settings (see docs/llama_index.md, "Switching").

        >>> BGEReranker.from_dict({"class_name": "BGEReranker", "top_n": 5}).top_n
        5
        """
        if not isinstance(data, Mapping):
            raise TypeError(
                f"BGEReranker.from_dict needs a dict such as to_dict() returns, got "
                f"{type(data).__name__}"
            )
        got = data.get("class_name", cls.class_name())
        if got != cls.class_name():
            raise ValueError(
                f"BGEReranker.from_dict got the settings of class_name={got!r}, expected "
                f"{cls.class_name()!r}. Another reranker's settings do not carry over as they "
                "are (defaults such as top_n, the model and the score scale differ): build "
                "BGEReranker(...) with the arguments you want, or drop 'class_name' from the "
                "dict if you mean exactly those values."
            )
        return super().from_dict(dict(data), **kwargs)

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

    def _results(self, nodes: list[NodeWithScore], ranked: list[Hit]) -> list[NodeWithScore]:
        out = []
        for index, score, details in ranked:
            original = nodes[index]
            node = original.node
            extra: dict[str, Any] = {}
            if self.keep_retrieval_score:
                extra["retrieval_score"] = original.score
            update: dict[str, Any] = {}
            if details is not None:
                extra.update(details)
                # The score keys describe the ranking, not the content: keep them out of the
                # text the LLM and the embedding model see.
                for name in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
                    kept = getattr(node, name)
                    update[name] = [*kept, *(k for k in SCORE_KEYS if k not in kept)]
            if extra:
                node = node.model_copy(update={**update, "metadata": {**node.metadata, **extra}})
            out.append(NodeWithScore(node=node, score=float(score)))
        return out

    @staticmethod
    def _first_stage_inputs(nodes: list[NodeWithScore]) -> dict[str, list[Any]]:
        return {
            "retrieval_scores": [n.score for n in nodes],
            "metadatas": [n.node.metadata for n in nodes],
        }

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
            return finish(self.rank_texts(query, texts, **self._first_stage_inputs(nodes)))

    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        """Like the sync path, off the event loop: a scorer's own ``ascore`` is awaited (a
        remote scorer), a local model runs in a worker thread."""
        query, texts = self._texts(nodes, query_bundle)
        if not nodes:
            return []
        with self._reranking(nodes, query_bundle) as finish:
            return finish(await self.arank_texts(query, texts, **self._first_stage_inputs(nodes)))

    @contextmanager
    def _reranking(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> Iterator[Callable[[list[Hit]], list[NodeWithScore]]]:
        """The events around one rerank, shared by the sync and async paths.

        Yields ``finish(ranked) -> nodes``, which builds the results and closes the callback
        event; the instrumentation end event follows once the callback event has closed.
        """
        payload = self._start(nodes, query_bundle)  # type: ignore[arg-type]
        done: list[list[NodeWithScore]] = []
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:

            def finish(ranked: list[Hit]) -> list[NodeWithScore]:
                done.append(self._results(nodes, ranked))
                event.on_end(payload={EventPayload.NODES: done[-1]})
                return done[-1]

            yield finish
        dispatcher.event(ReRankEndEvent(nodes=done[-1]))
