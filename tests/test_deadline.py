"""The scorer's deadline fails open: ``rank(..., timeout=)`` returns the first-stage order,
flagged ``reranked=False``, within about the timeout, with a warning and never an exception."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from bge_rerank_plugins.ranking import deadline_fallbacks
from bge_rerank_plugins.runtime.deadline import DeadlineExceeded, check_deadline, deadline_scope

QUERY = "what do giant pandas eat?"
PASSAGES = [f"passage number {i} about bamboo and pandas" for i in range(40)]
FIRST_STAGE = [float(i % 7) for i in range(40)]  # an order unlike the input order


@pytest.fixture
def slow_scorer(tiny_bert: Path):
    """The real tiny model, one pair per batch, each batch 20 ms slower than it is."""
    from bge_rerank_plugins import CrossEncoderScorer

    real = CrossEncoderScorer(tiny_bert, batch_size=1).runner
    batches = []

    def slow(tensors):
        batches.append(time.monotonic())
        time.sleep(0.02)
        return real(tensors)

    scorer = CrossEncoderScorer(tiny_bert, batch_size=1, runner=slow)
    scorer.batches = batches  # type: ignore[attr-defined]
    return scorer


def test_a_tiny_timeout_returns_the_first_stage_order_in_time(slow_scorer, caplog) -> None:
    timeout = 0.2  # 40 batches of 20 ms would take 0.8 s
    before = deadline_fallbacks()
    with caplog.at_level(logging.WARNING, logger="bge_rerank_plugins.ranking"):
        start = time.monotonic()
        ranked = slow_scorer.rank(QUERY, PASSAGES, first_stage_scores=FIRST_STAGE, timeout=timeout)
        elapsed = time.monotonic() - start
    assert elapsed < 2 * timeout
    assert 0 < len(slow_scorer.batches) < len(PASSAGES)  # stopped at a batch boundary
    assert [r.index for r in ranked] == sorted(range(40), key=lambda i: (-FIRST_STAGE[i], i))
    assert all(r.reranked is False and r.reranker_score is None for r in ranked)
    assert [r.score for r in ranked] == [FIRST_STAGE[r.index] for r in ranked]
    assert [r.first_stage_score for r in ranked] == [r.score for r in ranked]
    assert deadline_fallbacks() == before + 1
    assert "did not finish within timeout=0.2 s" in caplog.text
    assert "reranked=False" in caplog.text


def test_without_first_stage_scores_the_input_order_comes_back(slow_scorer) -> None:
    ranked = slow_scorer.rank(QUERY, PASSAGES, top_k=5, timeout=0.05)
    assert [r.index for r in ranked] == [0, 1, 2, 3, 4]
    assert [r.score for r in ranked] == [1.0, 0.5, 1 / 3, 0.25, 0.2]  # follows the order
    assert not any(r.reranked for r in ranked)


def test_a_generous_timeout_changes_nothing(tiny_bert: Path) -> None:
    from bge_rerank_plugins import CrossEncoderScorer

    scorer = CrossEncoderScorer(tiny_bert)
    plain = scorer.rank(QUERY, PASSAGES[:6])
    timed = scorer.rank(QUERY, PASSAGES[:6], timeout=60)
    assert timed == plain and all(r.reranked for r in timed)
    # the deadline is gone once rank returns: later calls are not cut
    assert len(scorer.score(QUERY, PASSAGES[:6])) == 6


def test_the_deadline_is_per_call_and_per_thread(slow_scorer) -> None:
    """A thread with no timeout is never cut by another thread's deadline."""
    results = {}

    def untimed() -> None:
        results["untimed"] = slow_scorer.rank(QUERY, PASSAGES[:8])

    worker = threading.Thread(target=untimed)
    worker.start()
    results["timed"] = slow_scorer.rank(QUERY, PASSAGES, timeout=0.03)
    worker.join(timeout=30)
    assert all(r.reranked for r in results["untimed"]) and len(results["untimed"]) == 8
    assert not any(r.reranked for r in results["timed"])


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), (True, TypeError),
     ("1", TypeError)],
)  # fmt: skip
def test_bad_timeouts_are_refused(tiny_bert: Path, timeout, error) -> None:
    from bge_rerank_plugins import CrossEncoderScorer

    with pytest.raises(error, match="timeout must be"):
        CrossEncoderScorer(tiny_bert).rank(QUERY, PASSAGES[:2], timeout=timeout)


def test_the_scope_and_the_check() -> None:
    check_deadline(1e9)  # no scope: nothing is checked
    with deadline_scope(None):
        check_deadline(1e9)
    with deadline_scope(5.0):
        check_deadline(0.0)
        with pytest.raises(DeadlineExceeded):
            check_deadline(10.0)  # the next batch would end after the deadline
    with deadline_scope(0.0), pytest.raises(DeadlineExceeded):
        check_deadline()
    check_deadline(1e9)  # reset on leaving the scope
