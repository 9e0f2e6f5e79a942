"""BM25 over a set of documents: the first stage of evaluation and of hard-negative mining.

:class:`Bm25Index` wraps ``bm25s`` (the Lucene BM25 variant, ``k1 = 1.5``, ``b = 0.75``, English
stopwords) behind three calls: ``scores`` (every document), ``search`` (the top k) and
``rerank`` (a given id list in BM25 order). :func:`bm25_tokenize` is the tokenizer it indexes
and queries with: lower-cased words, plus character unigrams and bigrams for Chinese, Japanese
and Korean text, which has no spaces between words.

Every ordering is best first with stable ties (:func:`~bge_rerank_plugins.fields.best_first`),
so equal BM25 scores keep the index order (``search``) or the given order (``rerank``).

This module used to live inside :mod:`bge_rerank_plugins.beir`, which still re-exports
``Bm25Index`` and ``bm25_tokenize``.

>>> bm25_tokenize("Pandas eat bamboo")
['pandas', 'eat', 'bamboo']
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .fields import as_template, best_first

__all__ = ["Bm25Index", "bm25_tokenize"]

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+", re.UNICODE)
_CJK_CHAR = re.compile(rf"[{_CJK}]")


def bm25_tokenize(text: str, stopwords: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Lower-cased word tokens; Chinese, Japanese and Korean text gives character unigrams
    plus bigrams (those scripts have no spaces between words). Single ASCII letters and
    ``stopwords`` are dropped.

    >>> bm25_tokenize("BM25 ranks 头痛怎么办")
    ['bm25', 'ranks', '头', '痛', '怎', '么', '办', '头痛', '痛怎', '怎么', '么办']
    """
    tokens = _TOKEN.findall(text.lower())
    cjk = [t for t in tokens if _CJK_CHAR.fullmatch(t)]
    bigrams: list[str] = []
    prev: str | None = None
    for token in tokens:
        is_cjk = _CJK_CHAR.fullmatch(token) is not None
        if is_cjk and prev is not None:
            bigrams.append(prev + token)
        prev = token if is_cjk else None
    words = [
        t for t in tokens if (len(t) > 1 or not t.isascii() or t.isdigit()) and t not in stopwords
    ]
    if not cjk:
        return words
    return words + bigrams


class Bm25Index:
    """BM25 (``bm25s``, Lucene variant) over a set of documents rendered to text.

    Args:
        ids: document ids, in the order of ``texts``.
        texts: the document texts (e.g. title + text via a ``PassageTemplate``).
        k1, b: the BM25 parameters.

    >>> index = Bm25Index(["a", "b"], ["cats purr", "dogs bark loudly"])  # doctest: +SKIP
    >>> index.search("dogs", k=1)  # doctest: +SKIP
    [('b', 0.46)]
    """

    def __init__(
        self, ids: Sequence[str], texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75
    ) -> None:
        try:
            import bm25s
        except ImportError as error:
            raise ImportError(
                "BM25 needs the 'bm25s' package: pip install 'bge-rerank-plugins[eval]'"
            ) from error
        if len(ids) != len(texts):
            raise ValueError(f"ids and texts differ in length ({len(ids)} != {len(texts)})")
        if not ids:
            raise ValueError("Bm25Index needs at least one document")
        from bm25s.stopwords import STOPWORDS_EN

        self._stopwords = frozenset(STOPWORDS_EN)
        self.ids = list(ids)
        self._position = {doc_id: i for i, doc_id in enumerate(self.ids)}
        tokens = [bm25_tokenize(t, self._stopwords) or ["\x00empty"] for t in texts]
        self._retriever = bm25s.BM25(k1=k1, b=b)
        # bm25s pins its logger at DEBUG, which floods applications that log at INFO or
        # lower; quieten it while indexing only.
        bm25s_logger = logging.getLogger("bm25s")
        level = bm25s_logger.level
        bm25s_logger.setLevel(max(level, logging.WARNING))
        try:
            self._retriever.index(tokens, show_progress=False)
        finally:
            bm25s_logger.setLevel(level)

    @classmethod
    def from_corpus(
        cls, corpus: Mapping[str, Any], template: Any = None, **params: float
    ) -> Bm25Index:
        """Index a corpus ``{doc_id: record}``, such as a loaded BEIR corpus.

        ``template`` (default title + text) renders each record, e.g. a
        :class:`~bge_rerank_plugins.beir.Document`, to the text that is indexed.
        """
        tpl = as_template(template)
        ids = list(corpus)
        return cls(ids, [tpl.render(corpus[i]) for i in ids], **params)

    def scores(self, query: str) -> Any:
        """BM25 score of every indexed document for ``query`` (a numpy array in ``ids`` order)."""
        tokens = bm25_tokenize(query, self._stopwords)
        if not tokens:  # nothing to match (e.g. only stopwords): every score is 0
            import numpy as np

            return np.zeros(len(self.ids), dtype=np.float32)
        return self._retriever.get_scores(tokens)

    def search(self, query: str, k: int = 100) -> list[tuple[str, float]]:
        """The ``k`` best ``(doc_id, score)`` pairs, best first; ties keep index order.

        Documents with score 0 (no query term in common) are not returned.
        """
        import numpy as np

        scores = self.scores(query)
        k = min(k, len(self.ids))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(self.ids) else np.arange(len(self.ids))
        positions = sorted(top.tolist())  # index order, so that best_first's ties keep it
        order = [positions[j] for j in best_first([float(scores[i]) for i in positions])]
        return [(self.ids[i], float(scores[i])) for i in order if scores[i] > 0]

    def rerank(self, query: str, ids: Sequence[str]) -> list[str]:
        """``ids`` sorted by BM25 score for ``query``, best first; ties keep the given order."""
        scores = self.scores(query)
        positions = []
        for doc_id in ids:
            if doc_id not in self._position:
                raise KeyError(f"document {doc_id!r} is not in the BM25 index")
            positions.append(self._position[doc_id])
        return [ids[j] for j in best_first([float(scores[p]) for p in positions])]
