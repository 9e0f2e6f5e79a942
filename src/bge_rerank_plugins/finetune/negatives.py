"""Hard-negative mining for cross-encoder fine-tuning.

A first stage ranks the corpus for each query; negatives are drawn from a window of that
ranking (e.g. ranks 10 to 100), known positives excluded. The first stage is one of:

* ``"candidates"``: the ``ranked`` lists of ``candidates/<split>.jsonl`` (already mined BM25
  lists; judged lists without ``ranked`` use their ``pos`` then ``neg`` order);
* ``"bm25"``: BM25 over the corpus with ``bm25s``;
* ``"dense"``: a sentence-transformers bi-encoder (``model`` = its folder), cosine similarity;
* ``"cross-encoder"``: BM25 top ``depth`` reranked by a :class:`CrossEncoderScorer`
  (``model`` = a cross-encoder id or folder, or a scorer);
* ``"auto"``: ``"candidates"`` when the split's candidate file has ranked lists, else
  ``"bm25"``.

>>> select_negatives(["p", "a", "b", "c", "d"], {"p"}, num_negatives=2, rank_range=(2, 4),
...                  sampling="top")
['a', 'b']
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..fields import as_template, best_first

if TYPE_CHECKING:
    from ..beir import BeirDataset

__all__ = [
    "SOURCES",
    "NegativeMiningConfig",
    "first_stage_rankings",
    "mine_hard_negatives",
    "select_negatives",
]

logger = logging.getLogger(__name__)

#: First stages :func:`mine_hard_negatives` can use.
SOURCES = ("auto", "candidates", "bm25", "dense", "cross-encoder")


@dataclass(frozen=True)
class NegativeMiningConfig:
    """How hard negatives are mined.

    Attributes:
        source: the first stage, one of :data:`SOURCES`.
        num_negatives: negatives per query (fewer when the window holds fewer).
        rank_range: ``(first, last)`` 1-based ranks, both included, of the window negatives
            are drawn from; ``(10, 100)`` skips the 9 best-ranked documents, which are the
            likeliest unlabelled positives.
        sampling: ``"random"`` (seeded sample from the window) or ``"top"`` (the best-ranked).
        seed: seed of the random sampling (each query's draw depends only on the seed and the
            query id, so subsets draw the same negatives).
        depth: how many documents the ``bm25``, ``dense`` and ``cross-encoder`` first stages
            rank per query (at least ``rank_range[1]`` is used).
        model: the bi-encoder folder (``dense``) or the cross-encoder id, folder or scorer
            (``cross-encoder``).
        batch_size: encoding / scoring batch size of the model.

    >>> NegativeMiningConfig(num_negatives=4, rank_range=(10, 100)).rank_range
    (10, 100)
    """

    source: str = "auto"
    num_negatives: int = 7
    rank_range: tuple[int, int] = (1, 100)
    sampling: str = "random"
    seed: int = 0
    depth: int = 100
    model: Any = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if not isinstance(self.num_negatives, int) or self.num_negatives < 0:
            raise ValueError(f"num_negatives must be an int >= 0, got {self.num_negatives!r}")
        lo, hi = _check_range(self.rank_range)
        object.__setattr__(self, "rank_range", (lo, hi))
        if self.sampling not in ("random", "top"):
            raise ValueError(f"sampling must be 'random' or 'top', got {self.sampling!r}")
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be a positive int, got {self.depth!r}")
        if self.source in ("dense", "cross-encoder") and self.model is None:
            raise ValueError(
                f"source={self.source!r} needs model= (a sentence-transformers folder for "
                "'dense', a cross-encoder id, folder or scorer for 'cross-encoder')"
            )


def _check_range(rank_range: Sequence[int]) -> tuple[int, int]:
    try:
        lo, hi = (int(r) for r in rank_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"rank_range must be (first, last) 1-based ranks, got {rank_range!r}"
        ) from None
    if lo < 1 or hi < lo:
        raise ValueError(
            "rank_range must satisfy 1 <= first <= last (1-based, both included), "
            f"got {rank_range!r}"
        )
    return lo, hi


def select_negatives(
    ranking: Sequence[str],
    exclude: Collection[str],
    *,
    num_negatives: int,
    rank_range: Sequence[int] = (1, 100),
    sampling: str = "random",
    rng: random.Random | None = None,
) -> list[str]:
    """Pick negatives from ``ranking`` (best first) within ``rank_range``, minus ``exclude``.

    The window is ranks ``first..last`` (1-based, both included) of ``ranking`` before the
    exclusion. The result keeps ranking order.

    >>> select_negatives(["a", "b", "c"], {"b"}, num_negatives=5)
    ['a', 'c']
    """
    lo, hi = _check_range(rank_range)
    if sampling not in ("random", "top"):
        raise ValueError(f"sampling must be 'random' or 'top', got {sampling!r}")
    seen: set[str] = set()
    window = []
    for doc_id in ranking[lo - 1 : hi]:
        if doc_id in exclude or doc_id in seen:
            continue
        seen.add(doc_id)
        window.append(doc_id)
    if len(window) <= num_negatives:
        return window
    if sampling == "top":
        return window[:num_negatives]
    picked = set((rng or random.Random(0)).sample(range(len(window)), num_negatives))
    return [window[i] for i in sorted(picked)]


# ---------------------------------------------------------------------- first stages
def _resolve_source(dataset: BeirDataset, source: str) -> str:
    if source != "auto":
        return source
    if dataset.candidates and any(c.ranked is not None for c in dataset.candidates.values()):
        return "candidates"
    return "bm25"


def first_stage_rankings(
    dataset: BeirDataset,
    query_ids: Sequence[str],
    config: NegativeMiningConfig,
    *,
    template: Any = None,
) -> dict[str, list[str]]:
    """Each query's ranked document ids (best first) from the configured first stage."""
    source = _resolve_source(dataset, config.source)
    depth = max(config.depth, config.rank_range[1])
    if source == "candidates":
        if dataset.candidates is None:
            raise FileNotFoundError(
                f"source='candidates' but {dataset.path}/candidates/{dataset.split}.jsonl does "
                "not exist; use source='bm25'"
            )
        out = {}
        for qid in query_ids:
            cand = dataset.candidates.get(qid)
            out[qid] = list(cand.ids) if cand is not None else []
        return out
    tpl = as_template(template)
    if source == "dense":
        return _dense_rankings(dataset, query_ids, config, tpl, depth)
    from ..bm25 import Bm25Index

    index = Bm25Index.from_corpus(dataset.corpus, tpl)
    rankings = {
        qid: [d for d, _ in index.search(dataset.queries[qid].text, k=depth)] for qid in query_ids
    }
    if source == "bm25":
        return rankings
    return _cross_encoder_rankings(dataset, rankings, config, tpl)


def _dense_rankings(
    dataset: BeirDataset,
    query_ids: Sequence[str],
    config: NegativeMiningConfig,
    template: Any,
    depth: int,
) -> dict[str, list[str]]:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ImportError(
            "dense mining needs sentence-transformers: pip install 'bge-rerank-plugins[finetune]'"
        ) from error
    import torch

    model = (
        config.model
        if hasattr(config.model, "encode")
        else SentenceTransformer(str(config.model), device="cpu")
    )
    ids = list(dataset.corpus)
    docs = model.encode(
        [template.render(dataset.corpus[d]) for d in ids],
        batch_size=config.batch_size,
        convert_to_tensor=True,
        normalize_embeddings=True,
        show_progress_bar=len(ids) > 2000,
    )
    queries = model.encode(
        [dataset.queries[q].text for q in query_ids],
        batch_size=config.batch_size,
        convert_to_tensor=True,
        normalize_embeddings=True,
    )
    k = min(depth, len(ids))
    out: dict[str, list[str]] = {}
    for start in range(0, len(query_ids), 256):
        sims = queries[start : start + 256] @ docs.T
        top = torch.topk(sims, k, dim=1).indices.tolist()
        for qid, row in zip(query_ids[start : start + 256], top):
            out[qid] = [ids[i] for i in row]
    return out


def _cross_encoder_rankings(
    dataset: BeirDataset,
    rankings: Mapping[str, list[str]],
    config: NegativeMiningConfig,
    template: Any,
) -> dict[str, list[str]]:
    scorer = config.model
    if not hasattr(scorer, "score_many"):
        from ..scorer import CrossEncoderScorer

        scorer = CrossEncoderScorer(config.model, batch_size=config.batch_size)
    qids = list(rankings)
    scores = scorer.score_many(
        [dataset.queries[q].text for q in qids],
        [[template.render(dataset.corpus[d]) for d in rankings[q]] for q in qids],
    )
    out = {}
    for qid, row in zip(qids, scores):
        ids = rankings[qid]
        order = best_first(row)
        out[qid] = [ids[i] for i in order]
    return out


def mine_hard_negatives(
    dataset: BeirDataset,
    config: NegativeMiningConfig | None = None,
    *,
    query_ids: Sequence[str] | None = None,
    relevance_threshold: float = 1,
    exclude: Mapping[str, Collection[str]] | None = None,
    template: Any = None,
) -> dict[str, list[str]]:
    """Mine hard negatives (document ids) for the queries of a BEIR-style split.

    Args:
        dataset: the loaded split (:func:`bge_rerank_plugins.beir.load_beir`).
        config: the first stage, window, count and seed (default
            :class:`NegativeMiningConfig()`).
        query_ids: the queries to mine for (default: all queries of the split's qrels).
        relevance_threshold: documents with a qrels grade >= this are known positives and are
            never negatives.
        exclude: more document ids to leave out, per query id (e.g. unjudged near-duplicates).
        template: renders documents for BM25 / the models (default title + text).

    Returns:
        ``{query_id: [doc_id, ...]}`` in first-stage order.

    Example:
        >>> ds = load_beir("data/scifact", "train")  # doctest: +SKIP
        >>> negs = mine_hard_negatives(ds, NegativeMiningConfig(num_negatives=4,
        ...                            rank_range=(10, 100)))  # doctest: +SKIP
    """
    config = config or NegativeMiningConfig()
    qids = list(query_ids) if query_ids is not None else dataset.query_ids
    unknown = [q for q in qids if q not in dataset.queries]
    if unknown:
        raise ValueError(
            f"query_ids: {len(unknown)} ids are not queries of this split (first: {unknown[0]!r})"
        )
    rankings = first_stage_rankings(dataset, qids, config, template=template)
    out: dict[str, list[str]] = {}
    short = 0
    for qid in qids:
        known = dataset.relevant(qid, relevance_threshold)
        if exclude and qid in exclude:
            known = known | set(exclude[qid])
        rng = random.Random(f"{config.seed}/{qid}")
        picked = select_negatives(
            rankings.get(qid, []),
            known,
            num_negatives=config.num_negatives,
            rank_range=config.rank_range,
            sampling=config.sampling,
            rng=rng,
        )
        short += len(picked) < config.num_negatives
        out[qid] = picked
    if short:
        logger.info(
            "%d of %d queries got fewer than %d negatives (window %s of %s rankings)",
            short,
            len(qids),
            config.num_negatives,
            config.rank_range,
            _resolve_source(dataset, config.source),
        )
    return out
