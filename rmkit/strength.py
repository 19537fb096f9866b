"""Preference strength from an ensemble's reward differences (Wang et al. 2024, Sec. 3.1, Eq. 4).

Function-first, over plain arrays, so it works with anyone's reward models:

    diffs = ...                                  # (M, N): r_m(chosen_i) - r_m(rejected_i); NaN where
                                                 # member m did not score pair i (cross-fitting)
    mean, std = preference_strength(diffs)       # (N,), (N,)  Eq. 4, population std
    quality = pair_quality_scores(diffs)         # (N,) in [0, 1]: the ensemble's P(label is right)
    suspects = find_label_issues(diffs)          # indices, most suspect first
    table = strength_table(diffs, ids=ids)       # DataFrame with categories and ranks
    StrengthReport(table).report()               # a printed summary

Categories (`CategoryRules`, all thresholds settable), under one of two rule sets:
- ``likely_mislabeled``: rule set ``calibrated`` (the audit's default): the calibrated probability that
  the label is wrong (`rmkit.calibration`) reaches ``min_confidence``, in a subset the ensemble can
  judge; rule set ``paper``: mean < ``mislabeled_below`` (0 by default, the paper's rule);
- ``ambiguous``: not mislabeled, and mean < ``ambiguous_z`` * std (the members do not agree the
  chosen side is better by more than their own spread);
- ``strong``: mean at or above the ``strong_quantile`` of all means;
- ``consistent``: the rest;
- ``unjudged`` (calibrated rules): the pair's subset is one where the ensemble's held-out agreement
  with the labels is not above chance, so the audit says nothing about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from .calibration import crossfit_calibration, crossfit_calibration_by_group
from .config import setting

CATEGORIES = ("likely_mislabeled", "ambiguous", "consistent", "strong")
RULE_SETS = ("calibrated", "paper")


def _check_diffs(diffs: np.ndarray) -> np.ndarray:
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 2:
        raise ValueError(f"diffs must have shape (members M, pairs N), got {diffs.shape}")
    return diffs


def _check_members_first(diffs: np.ndarray) -> np.ndarray:
    diffs = _check_diffs(diffs)
    if diffs.shape[0] > diffs.shape[1] and diffs.shape[0] > 100:
        raise ValueError(f"diffs has shape {diffs.shape}: {diffs.shape[0]} members and {diffs.shape[1]} pairs? "
                         "diffs is (members M, pairs N); pass diffs.T if yours is (N, M)")
    return diffs


def preference_strength(diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std over members of each pair's reward difference (Eq. 4).

    NaN entries (members that did not score a pair) are left out; a pair no member scored gets NaN.
    """
    diffs = _check_diffs(diffs)
    scored = np.isfinite(diffs)
    n = scored.sum(0)  # (N,)
    total = np.where(scored, diffs, 0.0).sum(0)
    mean = np.divide(total, n, out=np.full(diffs.shape[1], np.nan), where=n > 0)
    sq = np.where(scored, (diffs - mean) ** 2, 0.0).sum(0)
    std = np.sqrt(np.divide(sq, n, out=np.full(diffs.shape[1], np.nan), where=n > 0))
    return mean, std


def pair_quality_scores(diffs: np.ndarray) -> np.ndarray:
    """Mean over members of sigmoid(d_m): the ensemble's probability that the label is right.

    In [0, 1]; low means the members prefer the rejected response. cleanlab's label quality
    score, for pairs.
    """
    diffs = _check_diffs(diffs)
    probs = 1.0 / (1.0 + np.exp(-np.clip(diffs, -50, 50)))
    probs[~np.isfinite(diffs)] = np.nan
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.where(np.isfinite(diffs), probs, np.nan), axis=0) if diffs.size else probs


@dataclass
class CategoryRules:
    """Thresholds that sort pairs into categories."""

    mislabeled_below: float = setting(0.0, "likely mislabeled: mean strength below this")
    ambiguous_z: float = setting(1.0, "ambiguous: mean below this many of the pair's own stds (and not mislabeled)")
    strong_quantile: float = setting(0.9, "strong: mean at or above this quantile of all means")
    rule_set: Literal["calibrated", "paper"] = setting(
        "paper", "likely mislabeled by: calibrated (p_label_wrong >= min_confidence) or paper "
        "(mean < mislabeled_below)")
    min_confidence: float = setting(0.8, "calibrated rules: the p_label_wrong a flag needs")

    def check(self) -> None:
        if self.rule_set not in RULE_SETS:
            raise ValueError(f"rules must be one of {RULE_SETS}, got {self.rule_set!r}")
        if not 0.0 < self.strong_quantile <= 1.0:
            raise ValueError(f"strong_quantile must be in (0, 1], got {self.strong_quantile}")
        if not 0.5 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0.5, 1], got {self.min_confidence}")


def categorize(mean: np.ndarray, std: np.ndarray, rules: CategoryRules | None = None, *,
               p_label_wrong: np.ndarray | None = None, judged: np.ndarray | None = None) -> np.ndarray:
    """A category per pair (see the module docstring); ``unscored`` where the mean is NaN.

    The ``calibrated`` rule set needs ``p_label_wrong (N,)``; ``judged (N,)`` (default all True) marks
    pairs of subsets the ensemble can judge: the others are ``unjudged``.
    """
    rules = rules or CategoryRules()
    rules.check()
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    out = np.full(mean.shape, "consistent", dtype=object)
    ok = np.isfinite(mean)
    if ok.any():
        cut = np.quantile(mean[ok], rules.strong_quantile)
        out[ok & (mean >= cut)] = "strong"
    out[ok & (mean < rules.ambiguous_z * np.nan_to_num(std))] = "ambiguous"
    if rules.rule_set == "paper":
        out[ok & (mean < rules.mislabeled_below)] = "likely_mislabeled"
    else:
        if p_label_wrong is None:
            raise ValueError("the calibrated rules need p_label_wrong (rmkit.calibration), or use rule_set='paper'")
        p = np.nan_to_num(np.asarray(p_label_wrong, float), nan=0.0)
        out[ok & (p >= rules.min_confidence)] = "likely_mislabeled"
        if judged is not None:
            out[ok & ~np.asarray(judged, bool)] = "unjudged"
    out[~ok] = "unscored"
    return out


def find_label_issues(diffs: np.ndarray, *, return_mask: bool = False, below: float = 0.0) -> np.ndarray:
    """The paper's rule: pairs whose mean strength is below ``below``; indices from most to least suspect, or
    a mask. Ordered by the quality score (lowest first), ties broken by the mean.

    Uncalibrated: with a weak ensemble half the pairs fall below zero. `find_label_issues_calibrated`
    flags only pairs whose calibrated probability of a wrong label reaches a confidence.
    """
    diffs = _check_members_first(diffs)
    mean, _ = preference_strength(diffs)
    flagged = np.isfinite(mean) & (mean < below)
    if return_mask:
        return flagged
    quality = pair_quality_scores(diffs)
    idx = np.flatnonzero(flagged)
    return idx[np.lexsort((mean[idx], quality[idx]))]


def find_label_issues_calibrated(diffs: np.ndarray, *, fold: np.ndarray | None = None, labels: np.ndarray | None = None,
                                 min_confidence: float = 0.8, method: str = "temperature",
                                 groups: np.ndarray | None = None, return_probabilities: bool = False):
    """Pairs whose calibrated probability of a wrong label reaches ``min_confidence``, most probable first.

    ``diffs (M, N)`` should be out-of-sample (cross-fitted) differences. The map from mean strength to
    ``p_label_wrong`` is fitted on the data's own ``labels`` and cross-fitted over ``fold (N,)`` (default:
    two folds by position parity). ``groups (N,)`` (each pair's subset or source): the map is fitted within each
    group of 200+ decided pairs, as the audit does (`rmkit.calibration.crossfit_calibration_by_group`). With
    ``return_probabilities`` also returns ``p_label_wrong (N,)``.

    What it can find is bounded by how often the ensemble agrees with the truth: flips planted at 20% are ranked
    at AUROC 0.79 in rmkit's lab (the gold itself: 0.87) but 0.63 on hh-rlhf's human labels, where the audit's
    MiniLM ensemble agrees with 60% of them; one well-chosen head or cleanlab on the same differences does about as
    well (benchmarks/results/verdicts.json).
    """
    diffs = _check_members_first(diffs)
    mean, _ = preference_strength(diffs)
    fold = np.arange(len(mean)) % 2 if fold is None else np.asarray(fold)
    if groups is None:
        p_wrong = 1.0 - crossfit_calibration(mean, fold, labels, method=method)
    else:
        p_wrong = 1.0 - crossfit_calibration_by_group(mean, fold, np.asarray(groups, dtype=object), labels, method)[0]
    idx = np.flatnonzero(np.nan_to_num(p_wrong, nan=0.0) >= min_confidence)
    idx = idx[np.argsort(-p_wrong[idx], kind="stable")]
    return (idx, p_wrong) if return_probabilities else idx


def group_statistics(mean: np.ndarray, std: np.ndarray, n_groups: int = 20):
    """Pairs sorted by mean into ``n_groups`` equal groups: each group's mean of means and of stds.

    The paper's Fig. 2: on hh-rlhf the mean of std is U-shaped across the groups.
    """
    import pandas as pd

    ok = np.isfinite(mean)
    order = np.argsort(mean[ok], kind="stable")
    m, s = mean[ok][order], std[ok][order]
    rows = []
    for g, idx in enumerate(np.array_split(np.arange(len(m)), n_groups)):
        if len(idx) == 0:
            continue
        rows.append({"group": g, "pairs": int(len(idx)), "mean_min": float(m[idx].min()),
                     "mean_max": float(m[idx].max()), "mean_of_mean": float(m[idx].mean()),
                     "mean_of_std": float(s[idx].mean())})
    return pd.DataFrame(rows)


def strength_table(
    diffs: np.ndarray,
    *,
    ids: Sequence[str] | None = None,
    rules: CategoryRules | None = None,
    p_label_wrong: np.ndarray | None = None,
    judged: np.ndarray | None = None,
):
    """One row per pair: id, mean, std, z (mean / std), quality, p_label_wrong (when given), category,
    rank (1 = most suspect: highest p_label_wrong when given, else lowest quality), members' diffs."""
    import pandas as pd

    diffs = _check_diffs(diffs)
    mean, std = preference_strength(diffs)
    quality = pair_quality_scores(diffs)
    table = pd.DataFrame({
        "id": list(ids) if ids is not None else np.arange(diffs.shape[1]).astype(str),
        "mean": mean, "std": std,
        "z": np.divide(mean, std, out=np.full(mean.shape, np.nan), where=np.nan_to_num(std) > 0),
        "quality": quality,
        "members_scored": np.isfinite(diffs).sum(0),
        "category": categorize(mean, std, rules, p_label_wrong=p_label_wrong, judged=judged),
    })
    # Pairs the audit can judge rank first: rank 1 is the most suspect pair it would flag, not one of a subset it
    # cannot judge.
    unjudged = np.zeros(len(mean), bool) if judged is None else ~np.asarray(judged, bool)
    if p_label_wrong is not None:
        table.insert(5, "p_label_wrong", np.asarray(p_label_wrong, float))
        order = np.lexsort((mean, -np.nan_to_num(np.asarray(p_label_wrong, float), nan=-np.inf), unjudged))
    else:
        order = np.lexsort((mean, np.nan_to_num(quality, nan=np.inf), unjudged))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    table["rank"] = np.where(np.isfinite(mean), rank, -1)
    table["member_diffs"] = [row.tolist() for row in diffs.T]
    return table


class StrengthReport:
    """A strength table with a printable summary (cleanlab's ``Datalab.report()`` for pairs)."""

    def __init__(self, table, *, subsets: Sequence[str] | None = None):
        self.table = table
        if subsets is not None:
            self.table = table.assign(subset=list(subsets))

    def summary(self) -> dict:
        t = self.table
        scored = t[np.isfinite(t["mean"])]
        out = {
            "pairs": int(len(t)),
            "scored": int(len(scored)),
            "share_mean_below_zero": float((scored["mean"] < 0).mean()) if len(scored) else float("nan"),
            "categories": {c: int((t["category"] == c).sum()) for c in (*CATEGORIES, "unjudged", "unscored")},
        }
        if "subset" in t:
            out["per_subset"] = {s: {c: int((g["category"] == c).sum()) for c in CATEGORIES}
                                 for s, g in t.groupby("subset")}
        return out

    def report(self, n: int = 5, *, what: str = "pairs") -> str:
        """Print (and return) a summary and the most suspect pairs (``what``: how to name the table's rows)."""
        s = self.summary()
        lines = [f"{s['pairs']} {what}, {s['scored']} scored; {s['share_mean_below_zero']:.1%} of them have mean "
                 "strength < 0"]
        lines += [f"  {c:18s} {k}" for c, k in s["categories"].items() if k]
        top = self.table[self.table["rank"] > 0].nsmallest(n, "rank")
        lines.append(f"most suspect {len(top)}:")
        lines += [f"  {r.id}: mean {r.mean:+.3f} std {r.std:.3f} quality {r.quality:.3f}" for r in top.itertuples()]
        text = "\n".join(lines)
        print(text)
        return text
