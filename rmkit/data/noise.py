"""Planted label noise for experiments: flip a seeded share of pairs, recording which."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from .pairs import PreferencePair


def inject_label_flips(
    pairs: Sequence[PreferencePair], fraction: float, *, seed: int = 0
) -> tuple[list[PreferencePair], np.ndarray]:
    """Swap chosen and rejected in a seeded ``fraction`` of pairs (noise for benchmarks and tests).

    Returns new pairs (the input is not modified) and a boolean mask of the flipped ones.
    """
    import numpy as np

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(pairs), dtype=bool)
    flipped[rng.choice(len(pairs), size=int(round(fraction * len(pairs))), replace=False)] = True
    out = [replace(p, chosen=p.rejected, rejected=p.chosen) if f else p for p, f in zip(pairs, flipped)]
    return out, flipped
