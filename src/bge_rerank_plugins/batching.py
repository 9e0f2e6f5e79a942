"""Length-sorted, token-budget batch planning (pure Python, no torch).

Pairs are sorted by token length, longest first, and cut into batches whose padded size
(``longest pair x pairs in batch``) stays within a token budget and whose pair count stays within
``batch_size``. Longest first means an out-of-memory error, if any, shows up on the first batch.

>>> plan_batches([5, 100, 7, 98], batch_size=8, token_budget=200)
[[1, 3], [2, 0]]
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["padded_tokens", "plan_batches"]


def plan_batches(lengths: Sequence[int], batch_size: int, token_budget: int) -> list[list[int]]:
    """Group indices of ``lengths`` into batches, longest first.

    Args:
        lengths: token length of each pair (after truncation).
        batch_size: most pairs in one batch.
        token_budget: most padded tokens (longest pair x pair count) in one batch; a single pair
            longer than the budget still gets a batch of its own, so nothing is dropped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = lengths[index]
        new_longest = max(longest, length)
        if current and (
            len(current) >= batch_size or new_longest * (len(current) + 1) > token_budget
        ):
            batches.append(current)
            current, new_longest = [], length
        current.append(index)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Tokens computed when each batch is padded to its longest pair."""
    return sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
