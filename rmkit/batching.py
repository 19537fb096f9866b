"""Which texts share a batch. Padding is wasted work, so texts of similar length go together: in sorted
order for inference (`length_sorted_batches`), in shuffled length groups for training
(`length_grouped_batches`)."""

from __future__ import annotations

from typing import Sequence

import torch


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

