"""The lab's labels: Bradley-Terry draws on the gold (at a temperature that sets how often a label goes against
it), planted flips, a length bonus the gold lacks, and the pairs written as the labels say."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import PreferencePair


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def expected_against(gold_diff: np.ndarray, temperature: float) -> float:
    """Expected share of Bradley-Terry labels at ``temperature`` that go against the gold's sign."""
    return float(np.mean(_sigmoid(-np.abs(gold_diff) / temperature)))


def choose_temperature(gold_diff: np.ndarray, against: float) -> float:
    """The temperature whose sampled labels go against the gold ``against`` of the time (bisection in log T)."""
    g = np.asarray(gold_diff, np.float64)
    lo, hi = math.log(1e-6 * np.abs(g).mean() + 1e-12), math.log(1e6 * np.abs(g).mean() + 1e-12)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected_against(g, math.exp(mid)) < against else (lo, mid)
    return math.exp(0.5 * (lo + hi))


def sample_labels(ids: Sequence[str], gold_diff: np.ndarray, temperature: float, *, flips: float = 0.0,
                  seed: int = 0):
    """Labels drawn from Bradley-Terry on the gold, then planted flips on top; one row per pair.

    Columns: ``id``; ``gold_diff`` (gold r(chosen) - r(rejected), sides as in the source data);
    ``p_chosen = sigmoid(gold_diff / T)``; ``sampled`` (1 if the draw prefers the source's chosen side);
    ``flipped`` (a planted flip reversed the draw); ``label`` (1 if the lab's label prefers the source's
    chosen side: ``sampled`` xor ``flipped``); ``against_gold`` (the lab's label contradicts the gold's sign).
    """
    import pandas as pd

    g = np.asarray(gold_diff, np.float64)
    rng = np.random.default_rng(seed)
    p = _sigmoid(g / temperature)
    sampled = rng.random(len(g)) < p
    flipped = np.zeros(len(g), bool)
    k = int(round(flips * len(g)))
    flipped[rng.choice(len(g), size=k, replace=False)] = True
    label = sampled ^ flipped
    return pd.DataFrame({"id": list(ids), "gold_diff": g, "p_chosen": p, "sampled": sampled.astype(int),
                         "flipped": flipped, "label": label.astype(int),
                         "against_gold": (label != (g > 0)) & (g != 0)})


def length_confounded(gold_diff: np.ndarray, length_diff: np.ndarray, bonus: float) -> np.ndarray:
    """The label law of the length-confounded lab: the gold difference plus a length term the gold does not have,
    ``gold + bonus * std(gold) * x / std(x)`` with ``x`` the signed log length difference (chosen minus rejected).
    Labels sampled from it (`sample_labels`, with the temperature chosen on it) favour the longer response more
    often than the gold does; detectors and RMs are still graded against the gold alone. ``bonus`` 1: a length
    difference one std wide moves the label as much as a gold difference one std wide."""
    from ..calibration import signed_log_length

    g = np.asarray(gold_diff, np.float64)
    x = signed_log_length(length_diff)
    return g + bonus * g.std() * x / (x.std() or 1.0)


def read_gold_scores(path: str | Path, ids: Sequence[str]) -> np.ndarray:
    """The gold differences ``(N,)`` of a gold.parquet (id, gold_diff) for ``ids``, in their order; an id
    without a gold score is an error naming the file."""
    import pandas as pd

    table = pd.read_parquet(path)
    by_id = dict(zip(table["id"], table["gold_diff"]))
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{path}: {len(missing)} pairs have no gold score (first: {missing[0]})")
    return np.array([by_id[i] for i in ids])


def lab_pairs(pairs: Sequence[PreferencePair], labels) -> list[PreferencePair]:
    """The pairs written as the lab's labels say: chosen and rejected swapped where ``label`` is 0."""
    by_id = dict(zip(labels["id"], labels["label"]))
    return [p if by_id[p.id] else replace(p, chosen=p.rejected, rejected=p.chosen) for p in pairs]


def as_labelled(diff: np.ndarray, label: np.ndarray) -> np.ndarray:
    """A difference ``(N,)`` taken with the source's sides, written with the lab's sides (negated where ``label``
    reversed them): how a proxy trained on the labels sees the pair."""
    return np.where(np.asarray(label, bool), diff, -np.asarray(diff))


def orient(a: np.ndarray, b: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows (or any per-side arrays) of the lab's chosen and rejected sides."""
    keep = np.asarray(label, bool).reshape((-1,) + (1,) * (np.ndim(a) - 1))
    return np.where(keep, a, b), np.where(keep, b, a)
