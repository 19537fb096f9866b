"""Which labels are wrong, which pairs are ties: detectors over plain arrays, and what a review budget buys.

Every detector returns a suspicion ``(N,)``: higher is more likely a wrong label (or a tie). They are the audit's
alternatives and its baselines (benchmarks/verdicts.py measures them side by side in the lab, where the truth is
known):

- the ensemble's calibrated ``p_label_wrong`` (`rmkit.calibration`; the audit's default adds a length term);
- `cleanlab_label_issues`: cleanlab's label quality on any model's out-of-sample reward differences;
- `aum` (Pleiss et al. 2020, area under the margin) and `cartography` (Swayamdipta et al. 2020, confidence and
  variability) from training dynamics: each pair's margin each time training visited it
  (``rmkit train --log-pair-margins``, `read_pair_margins`);
- `tie_scores`: how much a pair looks like a tie.

`review_budget` turns calibrated probabilities into what reviewing the k most suspect pairs is expected to find.

Shapes: ``diff (N,)`` reward differences chosen minus rejected, as labelled; ``margins (E, N)`` one row per visit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def cleanlab_label_issues(diff: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """cleanlab's label quality (`cleanlab.rank.get_label_quality_scores`, self-confidence) on pairs written as
    2-class examples (which response is shown first drawn at random, so both classes occur), from out-of-sample
    reward differences ``diff (N,)``: suspicion = 1 - label quality. Needs ``pip install cleanlab``."""
    from cleanlab.rank import get_label_quality_scores

    rng = np.random.default_rng(seed)
    swap = rng.random(len(diff)) < 0.5
    p_a = _sigmoid(np.where(swap, -np.asarray(diff), np.asarray(diff)))
    pred = np.clip(np.stack([p_a, 1 - p_a], 1), 1e-6, 1 - 1e-6)
    return 1.0 - get_label_quality_scores(swap.astype(int), pred)


def read_pair_margins(path: str | Path, ids: Sequence[str]) -> np.ndarray:
    """Margins ``(E, N)`` from ``pair_margins.jsonl`` (`rmkit train --log-pair-margins`): row e holds each pair's
    e-th visit, NaN where a pair was visited fewer times (or never)."""
    where = {i: k for k, i in enumerate(ids)}
    visits: list[list[float]] = [[] for _ in ids]
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            for i, m in zip(rec["id"], rec["margin"]):
                if i in where:
                    visits[where[i]].append(m)
    rows = max((len(v) for v in visits), default=0)
    out = np.full((rows, len(ids)), np.nan)
    for k, v in enumerate(visits):
        out[: len(v), k] = v
    return out


def aum(margins: np.ndarray) -> np.ndarray:
    """Area under the margin: suspicion ``-mean(margin)`` over a pair's visits ``margins (E, N)``. A pair the model
    learns late or never (a wrong label fights the rest of the data) keeps a low margin throughout."""
    return -np.nanmean(np.asarray(margins, np.float64), axis=0)


def cartography(margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dataset cartography over visits ``margins (E, N)``: ``confidence`` (mean probability the model gives the
    label) and ``variability`` (its std). Low confidence marks a likely wrong label (the "hard-to-learn" region);
    suspicion = 1 - confidence."""
    p = _sigmoid(np.asarray(margins, np.float64))
    return np.nanmean(p, axis=0), np.nanstd(p, axis=0)


def tie_scores(diffs: np.ndarray, *, lengths: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """How much each pair looks like a tie, from an ensemble's ``diffs (M, N)``: ``small_mean`` (``-|mean|``),
    ``small_z`` (``-|mean| / std``), ``std`` (the paper's ambiguity signal) and, given the responses' ``lengths``
    (chosen, rejected; ``(N,)`` each), ``similar_length`` (``-|log(1 + l_c) - log(1 + l_r)|``).

    On LLMEval²'s 473 human ties (benchmarks/verdicts.py): ``similar_length`` 0.63 AUROC, ``small_mean`` 0.55,
    ``small_z`` 0.51, ``std`` 0.43, below chance. A member's difference scales with how far apart the two responses
    are in its features (Spearman of std with that distance 0.70), so std is small exactly where the responses are
    alike, which is where humans call ties: it measures distance, not disagreement."""
    d = np.asarray(diffs, np.float64)
    mean, std = np.nanmean(d, axis=0), np.nanstd(d, axis=0)
    out = {"small_mean": -np.abs(mean), "small_z": -np.abs(mean) / np.maximum(std, 1e-12), "std": std}
    if lengths is not None:
        lc, lr = (np.asarray(x, np.float64) for x in lengths)
        out["similar_length"] = -np.abs(np.log1p(lc) - np.log1p(lr))
    return out


def review_budget(p_wrong: np.ndarray, *, budgets: Sequence[int] | None = None, suspicion: np.ndarray | None = None,
                  min_precision: float | None = None) -> list[dict]:
    """What reviewing the ``k`` most suspect pairs is expected to find, from calibrated ``p_wrong (N,)`` (ranked by
    ``suspicion`` when given, else by ``p_wrong``): for each budget k, the expected share of wrong labels among
    them (precision: the mean of their ``p_wrong``) and of all wrong labels they hold (recall: their sum over the
    total). With ``min_precision``, the largest budget that keeps the expected precision at or above it is added.
    Calibrated on the data's own labels, "wrong" includes the model's own mistakes (see the audit's trust notes)."""
    p = np.asarray(p_wrong, np.float64)
    ok = np.isfinite(p)
    order = np.flatnonzero(ok)[np.argsort(-(p if suspicion is None else np.asarray(suspicion, np.float64))[ok],
                                          kind="stable")]
    cum = np.cumsum(p[order])
    total = float(cum[-1]) if len(cum) else 0.0
    n = len(order)
    ks = sorted({int(k) for k in (budgets or []) if 0 < int(k) <= n} |
                {max(1, int(round(f * n))) for f in (0.01, 0.05, 0.1, 0.2)} if n else set())
    if min_precision is not None and n:
        running = cum / np.arange(1, n + 1)
        meets = np.flatnonzero(running >= min_precision)
        if len(meets):
            ks = sorted(set(ks) | {int(meets[-1]) + 1})
    return [{"k": k, "share": k / n, "expected_precision": float(cum[k - 1] / k),
             "expected_recall": float(cum[k - 1] / total) if total else float("nan")} for k in ks]
