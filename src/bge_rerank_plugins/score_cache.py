"""A bounded, thread-safe LRU cache of raw scores keyed by model, max_length and text."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["ScoreCache", "pair_key"]


def pair_key(model_key: Hashable, max_length: int, query: str, passage: str) -> tuple:
    """Cache key of one pair; texts are hashed so long passages cost 16 bytes each."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(query.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(passage.encode("utf-8"))
    return (model_key, max_length, digest.digest())


class ScoreCache:
    """Least-recently-used map from :func:`pair_key` to a raw logit, at most ``max_entries``.

    >>> cache = ScoreCache(max_entries=2)
    >>> cache.put("a", 1.0); cache.put("b", 2.0); cache.put("c", 3.0)
    >>> cache.get("a") is None, cache.get("c"), len(cache)
    (True, 3.0, 2)
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> float | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: float) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)
