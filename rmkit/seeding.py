"""Seeded choices keyed by a pair's id, not by its position: the same pair lands in the same split, fold
or presentation order however the data is ordered, filtered or resumed."""

from __future__ import annotations

import hashlib


def id_hash(seed: int, key: str) -> str:
    """A stable hex digest of ``(seed, key)``: sorting ids by it shuffles them reproducibly."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def id_bucket(seed: int, key: str, buckets: int) -> int:
    """A bucket in ``[0, buckets)`` for ``key`` (a fold, a coin flip), from `id_hash`."""
    return int(id_hash(seed, key)[:8], 16) % buckets
