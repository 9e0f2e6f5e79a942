"""``ScorerService``: the model behind the routes.

It loads the scorer in the background (the app answers ``/health`` with 503 meanwhile), merges
concurrent requests into shared batches (:class:`~.batcher.DynamicBatcher`), checks the request
limits and returns raw scores, all finite. Routes get it with the :func:`get_service`
dependency, which reads ``request.app.state.service``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import Request

from ..errors import NonFiniteScoreError, RerankerError
from .batcher import BatcherClosedError, BatchStats, DynamicBatcher
from .config import ServerConfig
from .errors import ApiError, ErrorKind
from .metrics import ServerMetrics
from .truncation import Truncation, apply_truncation

if TYPE_CHECKING:
    from ..scorer import CrossEncoderScorer

__all__ = ["DEADLINE_RETRY_AFTER_S", "LOADING_RETRY_AFTER_S", "ScorerService", "get_service"]

logger = logging.getLogger(__name__)

#: ``Retry-After`` (seconds) of a 503 while the model loads or the server shuts down.
LOADING_RETRY_AFTER_S = 2
#: ``Retry-After`` (seconds) of a 503 for a request that passed ``score_timeout_s``.
DEADLINE_RETRY_AFTER_S = 1


class ScorerService:
    """The scorer, its batcher and its load status, for one app.

    Args:
        config: the server settings.
        scorer_factory: builds the scorer (default ``config.build_scorer``); it is asked for raw
            logits, so its ``normalize`` setting does not matter.
        metrics: where batches and the queue are counted (default: a new
            :class:`~.metrics.ServerMetrics`).
        on_load_error: called (on the loading thread) with the exception if the model fails to
            load; without it the failure is logged and ``/health`` reports it.

    Attributes:
        scorer, batcher: ``None`` until the model has loaded.
        load_error: ``"Type: message"`` of a failed load, else ``None``.
        load_exception: the exception of a failed load, else ``None``.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        scorer_factory: Callable[[], CrossEncoderScorer] | None = None,
        metrics: ServerMetrics | None = None,
        on_load_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.scorer_factory = scorer_factory or config.build_scorer
        self.on_load_error = on_load_error
        self.scorer: CrossEncoderScorer | None = None
        self.batcher: DynamicBatcher | None = None
        self.load_error: str | None = None
        self.load_exception: BaseException | None = None

    # ------------------------------------------------------------ life cycle
    def set_threads(self) -> None:
        """Apply ``torch_threads`` (torch's setting is per thread: call it where the model runs)."""
        if self.config.torch_threads is not None:
            import torch

            torch.set_num_threads(self.config.torch_threads)

    def _on_batch(self, stats: BatchStats) -> None:
        self.metrics.observe_batch(
            requests=stats.requests, pairs=stats.pairs, seconds=stats.seconds
        )

    def load(self) -> None:
        """Build the scorer and start the batcher (blocking; the app runs it on a thread).

        A failure is recorded in ``load_error`` / ``load_exception``, never raised.
        """
        config = self.config
        try:
            self.set_threads()
            scorer = self.scorer_factory()
            batcher = DynamicBatcher(
                lambda pairs: scorer.score_pairs(pairs, normalize=False),
                max_batch_pairs=config.max_batch_pairs,
                max_wait_ms=config.max_batch_wait_ms,
                wait_fraction=config.batch_wait_fraction,
                enabled=config.batching,
                on_batch=self._on_batch,
                initializer=self.set_threads,
            )
            batcher.start()
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            self.load_exception = error
            if self.on_load_error is not None:
                logger.debug("Loading the model %r failed", config.model, exc_info=True)
                self.on_load_error(error)
            else:
                logger.error(
                    "Loading the model %r failed: %s (GET /health reports it; the server "
                    "cannot score until restarted)",
                    config.model,
                    self.load_error,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
            return
        self.scorer = scorer
        self.batcher = batcher
        self.metrics.track_queue(lambda: batcher.pending)
        self.metrics.model_loaded.set(1)
        logger.info("Model %r loaded; serving.", config.model)

    async def close(self) -> None:
        """Score what is still queued (up to ``drain_timeout_s``) and stop the batcher."""
        self.metrics.model_loaded.set(0)
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.close, self.config.drain_timeout_s)

    # ------------------------------------------------------------ requests
    def check_limits(self, query: str, texts: list[str], field: str) -> None:
        """413 for more than ``max_documents`` texts or a text over ``max_text_chars``."""
        config = self.config
        if len(texts) > config.max_documents:
            raise ApiError(
                ErrorKind.PAYLOAD_TOO_LARGE,
                f"{field} has {len(texts)} items; the limit is {config.max_documents} per "
                "request (server setting max_documents). Split the request.",
                field=field,
            )
        if len(query) > config.max_text_chars:
            raise ApiError(
                ErrorKind.PAYLOAD_TOO_LARGE,
                f"query has {len(query)} characters; the limit is {config.max_text_chars} "
                "(server setting max_text_chars).",
                field="query",
            )
        for i, text in enumerate(texts):
            if len(text) > config.max_text_chars:
                raise ApiError(
                    ErrorKind.PAYLOAD_TOO_LARGE,
                    f"{field}[{i}] has {len(text)} characters; the limit is "
                    f"{config.max_text_chars} (server setting max_text_chars). Split long "
                    "documents into chunks.",
                    field=f"{field}[{i}]",
                )

    def ready_batcher(self) -> DynamicBatcher:
        """The batcher, or a 503 (with ``Retry-After`` while loading; none after a failed load,
        which a retry does not fix)."""
        batcher = self.batcher
        if batcher is None:
            if self.load_error:
                raise ApiError(
                    ErrorKind.UNAVAILABLE, f"The model failed to load: {self.load_error}"
                )
            raise ApiError(
                ErrorKind.UNAVAILABLE,
                "The model is still loading; retry shortly.",
                retry_after=LOADING_RETRY_AFTER_S,
            )
        return batcher

    async def truncated(
        self, query: str, texts: list[str], truncation: Truncation | None, field: str
    ) -> tuple[str, list[str]]:
        """``query`` and ``texts`` cut as the request's truncation settings ask (on a thread:
        it tokenizes); unchanged when it sets none."""
        if truncation is None or truncation.is_default:
            return query, texts
        self.ready_batcher()
        return await asyncio.to_thread(
            apply_truncation, self.scorer, query, texts, truncation, field
        )

    async def raw_scores(
        self, query: str, texts: list[str], field: str, truncation: Truncation | None = None
    ) -> list[float]:
        """The model's raw scores for (query, text) pairs, all finite, or an :class:`ApiError`
        (503 while loading or shutting down, 500 if scoring fails or a score is not finite).
        ``truncation``: the request's own truncation settings (:mod:`.truncation`)."""
        query, texts = await self.truncated(query, texts, truncation, field)
        return await self.raw_pair_scores([(query, text) for text in texts], field)

    async def raw_pair_scores(self, pairs: list[tuple[str, str]], field: str) -> list[float]:
        """Raw scores of (query, text) pairs with any queries, as :meth:`raw_scores`."""
        batcher = self.ready_batcher()
        try:
            scores = await self._scored_in_time(batcher, pairs, field)
        except ApiError:  # the deadline's 503, as it is
            raise
        except BatcherClosedError:
            raise ApiError(
                ErrorKind.UNAVAILABLE,
                "The server is shutting down.",
                retry_after=LOADING_RETRY_AFTER_S,
            ) from None
        except NonFiniteScoreError as error:
            logger.error("Non-finite scores for a request: %s", error)
            raise ApiError(ErrorKind.NON_FINITE_SCORE, str(error)) from None
        except RerankerError as error:
            logger.error("Scoring a request failed: %s", error)
            raise ApiError(ErrorKind.MODEL_ERROR, str(error)) from None
        except Exception as error:
            logger.exception("Scoring a request failed")
            raise ApiError(
                ErrorKind.SERVER_ERROR, f"Scoring failed: {type(error).__name__}: {error}"
            ) from None
        bad = [i for i, score in enumerate(scores) if not math.isfinite(score)]
        if bad:
            # A scorer that does not check for itself (a custom factory, another backend): a NaN
            # would sort arbitrarily and go out as null, so no scores go out at all.
            message = (
                f"The model {self.config.model!r} gave a NaN or infinite score to {len(bad)} of "
                f"{len(scores)} pairs (first: {field}[{bad[0]}]); no scores were returned. The "
                "weights are most likely broken (a diverged fine-tune, a bad conversion) or "
                "half precision overflowed: check the model with dtype='float32'."
            )
            logger.error("%s", message)
            raise ApiError(ErrorKind.NON_FINITE_SCORE, message)
        return scores

    async def _scored_in_time(
        self, batcher: DynamicBatcher, pairs: list[tuple[str, str]], field: str
    ) -> list[float]:
        """The batcher's scores, or a 503 ``deadline_exceeded`` once ``score_timeout_s`` passes.

        Why a 503 and not the input order: TEI's and Cohere's responses have no way to say
        "not reranked", so made-up scores would pass a client's score threshold unnoticed; an
        error every client's parser knows (with ``Retry-After``, which retrying clients and load
        balancers honour) lets the client keep its own first-stage order. Cancelling the wait
        cancels the batcher's job, so a request still queued is never scored.
        """
        timeout = self.config.score_timeout_s
        if timeout is None:
            return await batcher.score(pairs)
        try:
            return await asyncio.wait_for(batcher.score(pairs), timeout)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            self.metrics.observe_deadline_fallback()
            logger.warning(
                "Scoring %d pairs (%s) did not finish within score_timeout_s=%g s; answered 503.",
                len(pairs),
                field,
                timeout,
            )
            raise ApiError(
                ErrorKind.DEADLINE_EXCEEDED,
                f"Scoring did not finish within the server's score_timeout_s={timeout:g} s "
                "(the server is busy, or the request is large); retry after Retry-After "
                "seconds, or keep the first-stage order.",
                retry_after=DEADLINE_RETRY_AFTER_S,
            ) from None


def get_service(request: Request) -> ScorerService:
    """FastAPI dependency: the app's :class:`ScorerService` (``request.app.state.service``)."""
    return request.app.state.service
