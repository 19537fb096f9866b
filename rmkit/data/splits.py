"""Seeded train/validation/test splits by subset, saved beside a run and reused (`get_splits`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence


from ..files import write_json
from ..seeding import id_hash
from .pairs import DataError, PreferenceDataset


def check_split_fractions(fractions: Sequence[float]) -> None:
    """Train, validation and test shares: three numbers >= 0 that sum to 1."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split_fractions must be three shares >= 0 (train, validation, test) summing to 1, "
                         f"got {list(fractions)}")


def split_ids(
    ds: PreferenceDataset,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> dict[str, list[str]]:
    """Deterministic train/validation/test split of the usable pairs, stratified by subset.

    Each pair's place depends only on its id, the seed and its subset's size, so adding a subset
    does not reshuffle the others.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    by_subset: dict[str, list[str]] = {}
    for p in ds.pairs:
        by_subset.setdefault(p.subset, []).append(p.id)
    out: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for sub in sorted(by_subset):
        # Order by a seeded hash of the id: stable, and independent of the file's row order.
        ids = sorted(by_subset[sub], key=lambda i: id_hash(seed, i))
        n = len(ids)
        n_test = round(n * fractions[2])
        n_val = round(n * fractions[1])
        out["test"] += ids[:n_test]
        out["validation"] += ids[n_test:n_test + n_val]
        out["train"] += ids[n_test + n_val:]
    return out


def save_splits(splits: dict[str, list[str]], path: str | os.PathLike, **meta: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"meta": meta, **splits})


def load_splits(path: str | os.PathLike) -> dict[str, list[str]]:
    data = json.loads(Path(path).read_text())
    return {k: data[k] for k in ("train", "validation", "test")}


def get_splits(
    ds: PreferenceDataset, path: str | os.PathLike | None, *, fractions=(0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list[str]]:
    """Reuse the splits saved at ``path`` if it exists (and matches the data), else make and save them."""
    if path is not None and Path(path).exists():
        splits = load_splits(path)
        known = {p.id for p in ds.pairs}
        missing = [i for s in splits.values() for i in s if i not in known]
        if missing:
            raise DataError(f"{path}: {len(missing)} split ids are not in the data (first: {missing[0]}); "
                            "delete the file to make new splits")
        return splits
    splits = split_ids(ds, fractions=fractions, seed=seed)
    if path is not None:
        save_splits(splits, path, seed=seed, fractions=list(fractions))
    return splits
