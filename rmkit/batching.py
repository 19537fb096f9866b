"""Which texts share a batch, and how their token ids are held until then. Padding is wasted work, so texts of
similar length go together: in sorted order for inference (`length_sorted_batches`), in shuffled length groups for
training (`length_grouped_batches`). `TokenIds` holds many texts' ids flat (int32), ~9x less memory than lists.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Sequence

import numpy as np
import torch


class TokenIds(Sequence):
    """Token ids of many texts in one int32 array: text k is ``flat[start[k]: start[k] + length[k]]``. As Python lists
    each token costs an int object and a pointer (~36 bytes); a million pairs' ids then outweigh everything else a
    job holds. Indexing gives a 1-D int32 array (``collate`` takes it as it takes a list)."""

    def __init__(self, flat: np.ndarray, start: np.ndarray, length: np.ndarray):
        self.flat, self.start, self.length = flat, start, length

    @classmethod
    def from_chunks(cls, chunks: Iterable[list[list[int]]]) -> "TokenIds":
        """From successive chunks of id lists (a tokenizer's output, chunk by chunk): only one chunk's lists live."""
        parts, lengths = [], []
        for ids in chunks:
            lengths.append(np.fromiter((len(x) for x in ids), np.int64, len(ids)))
            parts.append(np.fromiter(itertools.chain.from_iterable(ids), np.int32))
        length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64) if len(length) else length
        return cls(np.concatenate(parts) if parts else np.zeros(0, np.int32), start, length)

    def __len__(self) -> int:
        return len(self.length)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(len(self))[k]]
        return self.flat[self.start[k]: self.start[k] + self.length[k]]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices ``0..len(lengths)-1`` in batches of ``batch_size``, shortest texts first: the order every
    inference pass (scoring, encoding, embedding, sampling) runs in; callers write results back by index."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s: s + batch_size] for s in range(0, len(order), batch_size)]


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int, mega: int = 50) -> list[list[int]]:
    """Shuffle, then sort by length inside chunks of ``mega`` batches, then shuffle the batches.

    Batches hold texts of similar length (little padding) while the order stays random (TRL's
    ``group_by_length``). Deterministic for a given seed.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    batches: list[list[int]] = []
    step = batch_size * mega
    for s in range(0, len(perm), step):
        chunk = sorted(perm[s: s + step], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[k: k + batch_size] for k in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in order]

