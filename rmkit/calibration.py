"""From an ensemble's scores to calibrated probabilities that a pair's label is wrong, and how far to trust them.

cleanlab's rule, for pairs: a label issue is called only from out-of-sample, calibrated probabilities.
The audit's cross-fitted mean strength ``s_i`` (members that never saw pair i) is the score. A pair's
orientation is arbitrary (the same pair written the other way round has score ``-s_i`` and the
opposite label), so every calibration map here is symmetric, ``g(-s) = 1 - g(s)``:

- ``temperature``: ``P(label right | s) = sigmoid(a * s)``, one scale ``a >= 0`` fitted by maximum
  likelihood on the data's own labels (Platt scaling; by the symmetry its bias is 0);
- ``isotonic``: a monotone map fitted on the points ``(s, 1)`` and ``(-s, 0)``;
- ``length`` (the audit's default): ``P(label right | s, x) = sigmoid(a * s + b * x)`` with ``x`` the signed log
  length difference (`signed_log_length`), both fitted on the data's own labels: the label modelled as Bradley-Terry
  on the ensemble's strength plus a length term. Where the labels follow length more (or less) than the ensemble
  does, ``b`` takes up the difference, so a label that length alone explains is not called wrong because the
  ensemble does not see length (mean-pooled features barely do), and the ensemble's own length lean does not flag
  labels either. `length_share` says how much of a pair's verdict the length term makes. In the length-confounded
  lab (benchmarks/verdicts.py) it lifts flip AUROC from 0.79 to 0.83; in the plain lab it changes nothing.

Maps are cross-fitted too (`crossfit_calibration`): fitted on the other folds, applied to a fold, so no
pair's probability comes from a map that saw its label. ``p_label_wrong = 1 - P(label right | s)``.

Shapes: ``scores (N,)``, ``labels (N,)`` = probability that the side written as chosen is preferred
(1 for ordinary pairs, 0.5 for ties), ``fold (N,)`` ints.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

METHODS = ("temperature", "isotonic", "length")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def fit_temperature(scores: np.ndarray, labels: np.ndarray | None = None) -> float:
    """The scale ``a >= 0`` maximising ``sum_i y_i log sigmoid(a s_i) + (1 - y_i) log sigmoid(-a s_i)``.

    The log-likelihood is concave in ``a``: Newton's method from 0, with a bisection fallback.
    """
    s = np.asarray(scores, np.float64)
    y = np.ones_like(s) if labels is None else np.asarray(labels, np.float64)
    ok = np.isfinite(s) & np.isfinite(y)
    s, y = s[ok], y[ok]
    if len(s) == 0 or not np.any(s):
        return 0.0

    def grad(a: float) -> float:
        return float(np.sum(s * (y - _sigmoid(a * s))))

    if grad(0.0) <= 0:  # the scores point the wrong way on average: no positive scale helps
        return 0.0
    lo, hi = 0.0, 1.0 / (np.abs(s).mean() + 1e-12)
    while grad(hi) > 0 and hi < 1e8:
        lo, hi = hi, hi * 4
    for _ in range(100):  # bisection on the derivative: robust, and 100 halvings are plenty
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if grad(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


class IsotonicMap:
    """A symmetric monotone map from score to P(label right), fitted on ``(s, y)`` and ``(-s, 1 - y)``."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray | None = None):
        from sklearn.isotonic import IsotonicRegression

        s = np.asarray(scores, np.float64)
        y = np.ones_like(s) if labels is None else np.asarray(labels, np.float64)
        ok = np.isfinite(s) & np.isfinite(y)
        x = np.concatenate([s[ok], -s[ok]])
        t = np.concatenate([y[ok], 1 - y[ok]])
        self.iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(x, t)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        s = np.asarray(scores, np.float64)
        out = np.full(s.shape, np.nan)
        ok = np.isfinite(s)
        # Average the map at s and its mirror at -s so that g(-s) = 1 - g(s) holds exactly.
        out[ok] = 0.5 * (self.iso.predict(s[ok]) + 1.0 - self.iso.predict(-s[ok]))
        return out


def fit_length_aware(scores: np.ndarray, length_diff: np.ndarray, labels: np.ndarray | None = None,
                     *, l2: float = 1e-4) -> tuple[float, float]:
    """``(a, b)`` of ``P(label right) = sigmoid(a * s + b * x)``, ``x = signed_log_length(length_diff)``: a
    logistic regression without intercept (a pair written the other way round negates ``s``, ``x`` and the label),
    by Newton's method on the concave log-likelihood with a tiny ridge ``l2`` (per pair) that keeps it defined
    where the two columns are collinear. Scores and lengths are scaled to unit variance inside; the returned
    coefficients apply to the raw values."""
    s = np.asarray(scores, np.float64)
    x = signed_log_length(length_diff)
    y = np.ones_like(s) if labels is None else np.asarray(labels, np.float64)
    ok = np.isfinite(s) & np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return 0.0, 0.0
    scale = np.array([s[ok].std() or 1.0, x[ok].std() or 1.0])
    X = np.stack([s[ok], x[ok]], 1) / scale
    y = y[ok]
    w = np.zeros(2)
    lam = l2 * len(y)
    for _ in range(50):
        p = _sigmoid(X @ w)
        grad = X.T @ (y - p) - lam * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + lam * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w += step
        if np.abs(step).max() < 1e-10:
            break
    a, b = w / scale
    return float(a), float(b)


def length_share(scores: np.ndarray, length_diff: np.ndarray, a: float | np.ndarray, b: float | np.ndarray) -> np.ndarray:
    """How much of each pair's verdict against its label the length term makes, in [0, 1]: of the log-odds that
    push toward "label wrong" (``a * s`` and ``b * x`` where negative), the length term's part. 0 where nothing
    pushes that way."""
    es = np.minimum(np.asarray(a) * np.asarray(scores, np.float64), 0.0)
    el = np.minimum(np.asarray(b) * signed_log_length(length_diff), 0.0)
    total = es + el
    return np.divide(el, total, out=np.zeros_like(total), where=total < 0)


def fit_calibration(scores: np.ndarray, labels: np.ndarray | None = None, method: str = "temperature"):
    """A callable map from scores to P(label right), fitted on these scores and labels (``length`` needs the length
    differences: `crossfit_calibration` with ``length_diff``)."""
    if method == "temperature":
        a = fit_temperature(scores, labels)
        return lambda s: np.where(np.isfinite(s), _sigmoid(a * np.nan_to_num(np.asarray(s, np.float64))), np.nan)
    if method == "isotonic":
        return IsotonicMap(scores, labels)
    raise ValueError(f"calibration must be one of {METHODS}, got {method!r}")


def crossfit_calibration(scores: np.ndarray, fold: np.ndarray, labels: np.ndarray | None = None,
                         method: str = "temperature", *, length_diff: np.ndarray | None = None,
                         coefficients: dict | None = None) -> np.ndarray:
    """P(label right) for every pair from a map fitted on the other folds ``(N,)``; NaN where the score is.
    ``method="length"`` needs ``length_diff (N,)``; its fitted ``(a, b)`` per pair are written into
    ``coefficients`` (``{"a": (N,), "b": (N,)}``) when a dict is given, for `length_share`."""
    s = np.asarray(scores, np.float64)
    fold = np.asarray(fold)
    y = np.ones_like(s) if labels is None else np.asarray(labels, np.float64)
    out = np.full(s.shape, np.nan)
    folds = np.unique(fold)
    if len(folds) < 2:
        raise ValueError("crossfit_calibration needs at least 2 folds")
    if method == "length" and length_diff is None:
        raise ValueError("calibration 'length' needs the pairs' length differences")
    ab = np.zeros((2, len(s)))
    for k in folds:
        held = fold == k
        if method == "length":
            x = np.asarray(length_diff, np.float64)
            a, b = fit_length_aware(s[~held], x[~held], y[~held])
            ab[:, held] = [[a], [b]]
            z = a * np.nan_to_num(s[held]) + b * signed_log_length(x[held])
            out[held] = np.where(np.isfinite(s[held]), _sigmoid(z), np.nan)
        else:
            out[held] = fit_calibration(s[~held], y[~held], method)(s[held])
    if coefficients is not None:
        coefficients.update(a=ab[0], b=ab[1])
    return out


MIN_GROUP_PAIRS = 200  # a group's own calibration wants this many decided pairs (100 per fold fit two coefficients)


def crossfit_calibration_by_group(scores: np.ndarray, fold: np.ndarray, groups: np.ndarray,
                                  labels: np.ndarray | None = None, method: str = "temperature", *,
                                  length_diff: np.ndarray | None = None, coefficients: dict | None = None,
                                  min_pairs: int | None = None) -> tuple[np.ndarray, list[str]]:
    """`crossfit_calibration` fitted within each group ``groups (N,)`` (a dataset's subsets) of at least ``min_pairs``
    decided pairs (default `MIN_GROUP_PAIRS`), and over all pairs for the smaller groups: ``(P(label right) (N,),
    [groups calibrated apart])``.

    Why: subsets of one dataset carry different label noise (hh-rlhf's four agree with the ensemble on 52-63% of
    pairs), so one map from strength to P(label right) is too confident in the noisy subset and too timid in the clean
    one, and a ranking across subsets puts the noisy subset's close calls above the clean subset's clear
    contradictions. Flips planted on hh-rlhf's human labels: AUROC 0.643 against 0.632 for one calibration; the
    rmkit lab (one truth for every subset): 0.7925 against 0.7932 (benchmarks/results/verdicts.json). Not the audit's
    default: on the real hh-rlhf audit it made the tail of the subset where the ensemble is surest more confident, and
    its 22 extra flags there, read by hand, were mostly right labels that rejected a longer answer."""
    groups = np.asarray(groups, dtype=object)
    fold = np.asarray(fold)
    min_pairs = MIN_GROUP_PAIRS if min_pairs is None else min_pairs
    coef: dict = {}
    out = crossfit_calibration(scores, fold, labels, method, length_diff=length_diff, coefficients=coef)
    y = np.ones(len(groups)) if labels is None else np.asarray(labels, np.float64)
    apart = []
    for g in sorted(set(groups.tolist()), key=str):
        m = groups == g
        decided = m & (y != 0.5) & np.isfinite(np.asarray(scores, np.float64))
        if decided.sum() < min_pairs or len(np.unique(fold[decided])) < 2:
            continue
        sub: dict = {}
        out[m] = crossfit_calibration(np.asarray(scores)[m], fold[m], None if labels is None else y[m], method,
                                      length_diff=None if length_diff is None else np.asarray(length_diff)[m],
                                      coefficients=sub)
        if coef:
            coef["a"][m], coef["b"][m] = sub["a"], sub["b"]
        apart.append(str(g))
    if coefficients is not None:
        coefficients.update(coef)
    return out, apart


def flip_posterior(p_right: np.ndarray, noise_rate: float) -> np.ndarray:
    """P(the label was flipped | the ensemble's view), for labels flipped at random at ``noise_rate`` on top of
    whatever disagreement the data has anyway: the truth planted-flip studies grade against.

    ``p_right (N,)``: calibrated P(label right) (`crossfit_calibration`). With clean labels agreeing at
    ``rho``, the observed ones agree at ``q = (1 - pi) rho + pi (1 - rho)``; so ``rho = (q - pi) / (1 - 2 pi)``
    (clipped to [0, 1]) and, by Bayes, ``P(flipped | observed) = pi (1 - rho) / q``. ``p_label_wrong`` (1 - q)
    counts every reason a label can disagree (the ensemble's own errors, close calls); this counts only
    flips. ``noise_rate`` must come from outside the ensemble, e.g. the share of a random sample of pairs a
    reviewer flips (the ensemble cannot tell its own errors from flips).
    """
    if not 0.0 <= noise_rate < 0.5:
        raise ValueError(f"noise_rate must be in [0, 0.5), got {noise_rate}")
    q = np.clip(np.asarray(p_right, np.float64), 1e-9, 1.0)
    rho = np.clip((q - noise_rate) / (1.0 - 2.0 * noise_rate), 0.0, 1.0)
    return np.clip(noise_rate * (1.0 - rho) / q, 0.0, 1.0)


def expected_calibration_error(p: np.ndarray, y: np.ndarray, *, n_bins: int = 10) -> float:
    """ECE: the share-weighted mean over equal-width bins of |mean predicted - observed frequency|."""
    table = reliability_table(p, y, n_bins=n_bins)
    n = sum(r["count"] for r in table)
    return float(sum(r["count"] * abs(r["predicted"] - r["observed"]) for r in table) / max(n, 1))


def reliability_table(p: np.ndarray, y: np.ndarray, *, n_bins: int = 10) -> list[dict]:
    """Per equal-width bin of predicted probability: count, mean predicted, observed frequency."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(p) & np.isfinite(y)
    p, y = p[ok], y[ok]
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        m = which == b
        if m.any():
            rows.append({"bin": b, "lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(m.sum()),
                         "predicted": float(p[m].mean()), "observed": float(y[m].mean())})
    return rows


def symmetric_points(p_right: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Both orientations of every pair, ``(p, y)`` and ``(1 - p, 1 - y)``: calibration of a pair's label is
    measured on these, since a data set whose labels all read "chosen" has no negatives otherwise."""
    p = np.asarray(p_right, np.float64)
    y = np.ones_like(p) if labels is None else np.asarray(labels, np.float64)
    return np.concatenate([p, 1 - p]), np.concatenate([y, 1 - y])


def wilson_interval(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def agreement(scores: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """How often the score's sign agrees with the label (ties of either kind count half), with a Wilson interval."""
    s = np.asarray(scores, np.float64)
    y = np.ones_like(s) if labels is None else np.asarray(labels, np.float64)
    ok = np.isfinite(s) & np.isfinite(y) & (y != 0.5)
    hit = np.where(s[ok] == 0, 0.5, ((s[ok] > 0) == (y[ok] > 0.5)).astype(float))
    n = int(ok.sum())
    lo, hi = wilson_interval(float(hit.sum()), n)
    return {"pairs": n, "agreement": float(hit.mean()) if n else float("nan"), "ci_low": lo, "ci_high": hi,
            "judged": bool(n > 0 and lo > 0.5)}


def estimate_wrong_share(p_wrong: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """The expected share of labels the calibrated ensemble contradicts (mean of ``p_label_wrong``), with a
    95% bootstrap interval over pairs."""
    p = np.asarray(p_wrong, np.float64)
    p = p[np.isfinite(p)]
    if len(p) == 0:
        return {"share": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "pairs": 0}
    rng = np.random.default_rng(seed)
    boots = np.array([p[rng.integers(0, len(p), len(p))].mean() for _ in range(n_boot)])
    return {"share": float(p.mean()), "ci_low": float(np.quantile(boots, 0.025)),
            "ci_high": float(np.quantile(boots, 0.975)), "pairs": int(len(p))}


def signed_log_length(length_diff: np.ndarray) -> np.ndarray:
    """``sign(d) * log1p(|d|)``: length differences span orders of magnitude; their effect on rewards does not."""
    d = np.asarray(length_diff, np.float64)
    return np.sign(d) * np.log1p(np.abs(d))


def length_effect(diffs: np.ndarray, length_diff: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each member's linear effect of the length difference, cross-fitted: ``(M, N)`` to subtract from ``diffs``.

    For member m and fold k, ``beta = argmin sum (d_mi - beta * x_i)^2`` over the pairs of the other folds
    that m scored, with ``x = signed_log_length(length_diff)`` (no intercept: a pair written the other
    way round negates both). Subtracting ``beta * x`` leaves what the member says beyond length.
    """
    d = np.asarray(diffs, np.float64)
    x = signed_log_length(length_diff)
    fold = np.asarray(fold)
    out = np.zeros_like(d)
    for m in range(d.shape[0]):
        for k in np.unique(fold):
            fit = np.isfinite(d[m]) & (fold != k)
            if not fit.any() or not np.any(x[fit]):
                continue
            beta = float((d[m, fit] * x[fit]).sum() / (x[fit] ** 2).sum())
            out[m, fold == k] = beta * x[fold == k]
    return np.where(np.isfinite(d), out, np.nan)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation over the entries where both are finite."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)
