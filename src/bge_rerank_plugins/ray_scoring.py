"""Score a Ray Dataset of (query, passage) rows with the cross-encoder, one model per actor.

The same code runs on a laptop's local Ray instance and on a Ray cluster: ``map_batches`` starts
``concurrency`` actors, each loads the model once (on a GPU when ``num_gpus`` is set) and scores the
blocks it is handed with :meth:`~bge_rerank_plugins.CrossEncoderScorer.score_pairs`, so scores are
the ones the in-process scorer gives.

Needs the ``ray`` extra (``pip install "bge-rerank-plugins[ray]"``).

>>> import ray
>>> ds = ray.data.from_items([{"query": "q", "passage": "p", "id": 1}])  # doctest: +SKIP
>>> score_ray_dataset(ds, model="BAAI/bge-reranker-v2-m3").take_all()  # doctest: +SKIP
[{'query': 'q', 'passage': 'p', 'id': 1, 'score': 0.02}]

Every :class:`~bge_rerank_plugins.config.ScorerConfig` option reaches the actors: pass a whole
``config=ScorerConfig(...)``, or ``model=``, ``normalize=``, ``model_batch_size=`` and the rest
in ``scorer_options``. The options are checked on the driver, before any actor starts.

>>> from bge_rerank_plugins.config import ScorerConfig
>>> config = ScorerConfig(model="BAAI/bge-reranker-v2-m3", backend="torch-int8")
>>> score_ray_dataset(ds, config=config, num_cpus=2)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_MODEL, SCORER_CONFIG_FIELDS, ScorerConfig

if TYPE_CHECKING:
    import numpy as np
    import ray.data

__all__ = ["SCORER_OPTIONS", "PairScorer", "score_ray_dataset"]

#: ScorerConfig fields with an argument of their own, and that argument's name.
OWN_ARGUMENTS = {"model": "model", "normalize": "normalize", "batch_size": "model_batch_size"}

#: The keys ``scorer_options`` accepts: every other ScorerConfig field (derived, never copied).
SCORER_OPTIONS = frozenset(SCORER_CONFIG_FIELDS) - set(OWN_ARGUMENTS)

#: ScorerConfig fields Ray does not pass to its actors (checked by tests/test_config.py): none.
SCORER_CONFIG_EXCLUDED: tuple[str, ...] = ()

# Ray's default pairs per forward pass (the scorer's own default is 8 on CPU, 32 on a GPU).
_MODEL_BATCH_SIZE = 32


def _scorer_config(
    model: str | os.PathLike[str] | None,
    normalize: bool | None,
    model_batch_size: int | None,
    scorer_options: Mapping[str, Any] | None,
    config: ScorerConfig | None,
) -> ScorerConfig:
    """The config the actors load: ``config`` itself, or one built from the other arguments."""
    if config is not None:
        if not isinstance(config, ScorerConfig):
            raise TypeError(
                f"config must be a bge_rerank_plugins.ScorerConfig, got {type(config).__name__}"
            )
        given = [
            name
            for name, value in (
                ("model", model),
                ("normalize", normalize),
                ("model_batch_size", model_batch_size),
                ("scorer_options", scorer_options),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)}: config= already says how to score; pass these as "
                "ScorerConfig fields (dataclasses.replace(config, ...)), or drop config=."
            )
        return config
    if scorer_options is not None and not isinstance(scorer_options, Mapping):
        raise TypeError(
            f"scorer_options must be a dict of ScorerConfig fields, got "
            f"{type(scorer_options).__name__}"
        )
    unknown = set(scorer_options or {}) - SCORER_OPTIONS
    if unknown:
        raise TypeError(
            f"scorer_options has unknown keys {sorted(unknown)}; allowed: "
            f"{sorted(SCORER_OPTIONS)} (model, batch size and normalize have their own "
            "arguments)."
        )
    return ScorerConfig(
        model=DEFAULT_MODEL if model is None else model,
        normalize=True if normalize is None else normalize,
        batch_size=_MODEL_BATCH_SIZE if model_batch_size is None else model_batch_size,
        **(scorer_options or {}),
    )


class PairScorer:
    """The ``map_batches`` callable: holds one scorer, adds a score column to each batch.

    Args:
        model: Hub id or model directory (must be readable on every worker node; default
            ``BAAI/bge-reranker-v2-m3``).
        query_column, passage_column, score_column: column names.
        normalize: sigmoid scores in [0, 1] (``True``, the default) or raw logits.
        model_batch_size: most pairs per forward pass inside the actor (default 32).
        scorer_options: other :class:`~bge_rerank_plugins.config.ScorerConfig` fields.
        config: a whole :class:`~bge_rerank_plugins.config.ScorerConfig` instead of the four
            arguments above.

    Example:
        >>> import numpy as np
        >>> fn = PairScorer("BAAI/bge-reranker-v2-m3")  # doctest: +SKIP
        >>> fn({"query": np.array(["q"]), "passage": np.array(["p"])})["score"]  # doctest: +SKIP
        array([0.02])
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        query_column: str = "query",
        passage_column: str = "passage",
        score_column: str = "score",
        normalize: bool | None = None,
        model_batch_size: int | None = None,
        scorer_options: dict[str, Any] | None = None,
        config: ScorerConfig | None = None,
    ) -> None:
        from .scorer import CrossEncoderScorer

        config = _scorer_config(model, normalize, model_batch_size, scorer_options, config)
        self.query_column = query_column
        self.passage_column = passage_column
        self.score_column = score_column
        self.scorer = CrossEncoderScorer.from_config(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        for column in (self.query_column, self.passage_column):
            if column not in batch:
                raise KeyError(
                    f"column {column!r} is not in the dataset (columns: {sorted(batch)}); "
                    "pass query_column= / passage_column= to score_ray_dataset."
                )
        queries = [str(q) for q in batch[self.query_column]]
        passages = [p if isinstance(p, dict) else str(p) for p in batch[self.passage_column]]
        scores = self.scorer.score_pairs(list(zip(queries, passages)))
        out = dict(batch)
        out[self.score_column] = np.asarray(scores, dtype=np.float64)
        return out


def score_ray_dataset(
    ds: ray.data.Dataset,
    *,
    model: str | os.PathLike[str] | None = None,
    query_column: str = "query",
    passage_column: str = "passage",
    score_column: str = "score",
    concurrency: int | tuple[int, int] = 1,
    batch_size: int = 256,
    model_batch_size: int | None = None,
    normalize: bool | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    scorer_options: dict[str, Any] | None = None,
    config: ScorerConfig | None = None,
) -> ray.data.Dataset:
    """Add a score column to a Ray Dataset of (query, passage[, id, ...]) rows.

    Lazy like every Ray Data transform: nothing runs until the result is consumed
    (``take_all``, ``write_parquet``, ``iter_batches``...). Other columns pass through unchanged.

    Args:
        ds: the dataset; one row per (query, passage) pair.
        model: Hub id or model directory (a path must exist on every node; default
            ``BAAI/bge-reranker-v2-m3``).
        query_column, passage_column: input columns; passages may be strings or records
            (dicts, rendered with ``scorer_options={"template": ...}``).
        score_column: name of the added column.
        concurrency: number of scoring actors (each loads one model), or ``(min, max)`` for an
            autoscaling pool.
        batch_size: rows handed to an actor per call (the actor length-sorts them and runs
            forward passes of at most ``model_batch_size`` pairs).
        model_batch_size: most pairs per forward pass (default 32).
        normalize: sigmoid scores in [0, 1] (``True``, the default) or raw logits (``False``).
        num_cpus, num_gpus: resources reserved per actor (``num_gpus=1``: one GPU per model).
        scorer_options: the other :class:`~bge_rerank_plugins.config.ScorerConfig` fields
            (``max_length``, ``dtype``, ``backend``, ``template``...; see
            :data:`SCORER_OPTIONS`).
        config: a whole :class:`~bge_rerank_plugins.config.ScorerConfig` instead of ``model``,
            ``normalize``, ``model_batch_size`` and ``scorer_options`` (mixing the two is an
            error). Its ``batch_size=None`` means the scorer's default on the actor's device.

    Raises:
        TypeError, ValueError: a bad option, found here on the driver before any actor starts.

    Returns:
        The dataset with ``score_column`` added (float64).

    Example:
        >>> import ray
        >>> ds = ray.data.from_items(
        ...     [{"query": "what do pandas eat?", "passage": "Bamboo.", "id": 7}]
        ... )  # doctest: +SKIP
        >>> scored = score_ray_dataset(ds, model="BAAI/bge-reranker-v2-m3", concurrency=2)
        ... # doctest: +SKIP
        >>> scored.sort("score", descending=True).take(1)  # doctest: +SKIP
    """
    try:
        import ray.data  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "score_ray_dataset needs Ray Data: pip install 'bge-rerank-plugins[ray]'"
        ) from error
    config = _scorer_config(model, normalize, model_batch_size, scorer_options, config)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(concurrency, int) and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 or a (min, max) tuple, got {concurrency!r}")
    resources: dict[str, float] = {}
    if num_cpus is not None:
        resources["num_cpus"] = num_cpus
    if num_gpus is not None:
        resources["num_gpus"] = num_gpus
    return ds.map_batches(
        PairScorer,
        fn_constructor_kwargs={
            "query_column": query_column,
            "passage_column": passage_column,
            "score_column": score_column,
            "config": config,
        },
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        **resources,
    )
