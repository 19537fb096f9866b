"""How much rmkit keeps on disk between jobs under ``$RMKIT_CACHE``, and what goes first when there is too much.

Two caches grow with the data a user audits: the Arrow row files (`rmkit.data.columnar`, ~1.5 GB per million
hh-rlhf pairs, capped at ``$RMKIT_DATA_CACHE_GB``, default 20) and the encoded features (`rmkit.ensemble.encode_features`,
2 N V H numbers: ~15 GB per million pairs for MiniLM's 5 views in float32, capped at ``$RMKIT_FEATURE_CACHE_GB``, default
50). Writing a new entry removes the least recently used others until the rest fit; a use of an entry (a cached
load) counts as recent. A folder the caller names is the caller's and is never pruned. On Linux a removed file that
another process has mapped stays readable to it; only a later load has to rebuild it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np


def cache_limit_bytes(variable: str, default_gb: float) -> float:
    """The cap ``$variable`` sets in GB (``inf``: no cap), else ``default_gb``; bytes. A bad value is an error naming
    the variable."""
    raw = os.environ.get(variable, "").strip()
    try:
        gb = float(raw) if raw else default_gb
    except ValueError:
        raise ValueError(f"{variable}={raw!r}: not a number of GB (e.g. {default_gb:g}, or inf for no cap)") from None
    if gb < 0:
        raise ValueError(f"{variable}={raw!r}: must be >= 0")
    return gb * 1e9


def remove_least_recent(entries: dict[Path, tuple[float, int]], budget: float,
                        remove: Callable[[Path], None]) -> list[Path]:
    """Remove ``entries`` (``{path: (last use, bytes)}``) oldest use first until those left total at most ``budget``
    bytes; returns the removed."""
    total = sum(size for _, size in entries.values())
    removed = []
    for p in sorted(entries, key=lambda p: entries[p][0]):
        if total <= budget:
            break
        remove(p)
        total -= entries[p][1]
        removed.append(p)
    return removed


def mark_used(path: Path) -> None:
    """Set ``path``'s modification time to now: its last use, which pruning removes the oldest by."""
    try:
        os.utime(path)
    except OSError:  # a read-only cache: it is then not pruned by use either
        pass


DEFAULT_FEATURE_CACHE_GB = 50.0


def feature_cache_limit_bytes() -> float:
    """The cap on rmkit's own feature cache: ``$RMKIT_FEATURE_CACHE_GB`` GB (``inf``: no cap), else 50 GB."""
    return cache_limit_bytes("RMKIT_FEATURE_CACHE_GB", DEFAULT_FEATURE_CACHE_GB)


def _finished(entry: Path) -> bool:
    """Whether a feature-cache entry's encoding is complete: one ``done.npy`` marking every text, no process's own
    record beside it (a sharded run in progress, or a killed one that a rerun resumes)."""
    if any(entry.glob("done.rank*.npy")):
        return False
    try:
        return bool(np.load(entry / "done.npy", allow_pickle=False).all())
    except (OSError, ValueError, EOFError):
        return False


def prune_feature_cache(folder: Path, keep: Path, limit: float, *, idle_s: float = 600.0) -> list[Path]:
    """Remove the least recently used finished entries of the feature cache ``folder`` (one folder each; last use =
    its ``features.npy``'s modification time, which every use sets) until those left, ``keep`` among them, total at
    most ``limit`` bytes. Never removed: ``keep``; an unfinished entry (a killed run resumes from it); one used within
    the last ``idle_s`` seconds (another job may be opening it). Returns the removed folders."""
    import time

    def size(entry: Path) -> int:
        return sum(f.stat().st_size for f in entry.iterdir() if f.is_file())

    now = time.time()
    entries, fixed = {}, 0
    for entry in folder.iterdir():
        if not entry.is_dir():
            continue
        try:
            used, bytes_ = (entry / "features.npy").stat().st_mtime, size(entry)
        except OSError:  # removed meanwhile, or no array yet
            continue
        if entry == keep or now - used < idle_s or not _finished(entry):
            fixed += bytes_
        else:
            entries[entry] = (used, bytes_)
    return remove_least_recent(entries, limit - fixed, lambda p: shutil.rmtree(p, ignore_errors=True))
