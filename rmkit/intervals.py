"""Bootstrap intervals over prompts (or pairs): how far a mean over a few dozen units can be trusted.

The lab's comparisons are paired: two proxies' best-of-n picks, two PPO evaluations, two RMs' accuracies, all on
the same prompts. The per-unit difference ``diff (P,)`` carries the pairing, so what the prompts share cancels and
only the spread of the differences sets the interval. One resampling law for all of them, so that intervals in
`rmkit.bon`, `rmkit.rl` and the benchmarks are comparable and a seed reproduces each to the last digit.
"""

from __future__ import annotations

import numpy as np


def mean_interval(values, *, bootstrap: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values (P,)``: ``bootstrap`` resamples of the P units with
    replacement, drawn as one ``(bootstrap, P)`` index array from ``default_rng(seed)``."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"mean_interval needs a non-empty 1-D array of per-unit values, got shape {v.shape}")
    rows = np.random.default_rng(seed).integers(0, len(v), (bootstrap, len(v)))
    lo, hi = np.quantile(v[rows].mean(axis=1), [0.025, 0.975])
    return float(lo), float(hi)
