"""Bootstrap intervals over prompts (or pairs): how far a mean over a few dozen units can be trusted.

The lab's comparisons are paired: two proxies' best-of-n picks, two PPO evaluations, two RMs' accuracies, all on
the same prompts. The per-unit difference ``diff (P,)`` carries the pairing, so what the prompts share cancels and
only the spread of the differences sets the interval. One resampling law for all of them, so that intervals in
`rmkit.bon`, `rmkit.rl` and the benchmarks are comparable and a seed reproduces each to the last digit.
"""

from __future__ import annotations

import numpy as np


def resample_rows(n: int, *, bootstrap: int = 2000, seed: int = 0) -> np.ndarray:
    """The resampling law: ``(bootstrap, n)`` indices of n units drawn with replacement from ``default_rng(seed)``.
    Use the same rows for every statistic of one comparison (a ratio of two paired means, say), so they move
    together."""
    return np.random.default_rng(seed).integers(0, n, (bootstrap, n))


def mean_interval(values, *, bootstrap: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values (P,)`` over `resample_rows`."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"mean_interval needs a non-empty 1-D array of per-unit values, got shape {v.shape}")
    rows = resample_rows(len(v), bootstrap=bootstrap, seed=seed)
    lo, hi = np.quantile(v[rows].mean(axis=1), [0.025, 0.975])
    return float(lo), float(hi)
