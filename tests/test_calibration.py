"""Calibrated label-issue probabilities, ECE, agreement intervals and the length effect, on hand-made numbers."""

import numpy as np
import pytest

from rmkit.calibration import (agreement, crossfit_calibration, crossfit_calibration_by_group, estimate_wrong_share,
                               expected_calibration_error,
                               fit_calibration, fit_temperature, length_effect, reliability_table, symmetric_points,
                               wilson_interval)
from rmkit.strength import CategoryRules, categorize, find_label_issues, find_label_issues_calibrated


def _bt_data(n=4000, scale=2.0, seed=0):
    """Scores s, and labels drawn with P(label right) = sigmoid(scale * s): the true temperature is `scale`."""
    rng = np.random.default_rng(seed)
    s = rng.normal(0, 1, n)
    right = rng.random(n) < 1 / (1 + np.exp(-scale * s))
    # A wrong label shows up as the pair written the other way round: its score is negated.
    return np.where(right, s, -s), right


def test_temperature_recovers_the_scale_and_zero_when_scores_point_wrong():
    s, _ = _bt_data(scale=2.0)
    assert fit_temperature(s) == pytest.approx(2.0, abs=0.15)
    assert fit_temperature(-np.abs(s)) == 0.0  # every score contradicts its label: no positive scale helps
    # By hand: two pairs, scores 1 and -1, labels both 1: the likelihood is flat in the sign, optimum a = 0.
    assert fit_temperature(np.array([1.0, -1.0])) == pytest.approx(0.0, abs=1e-6)
    # Scores 1 (x3) and -1 (x1): sigmoid(a) = 3/4 maximises 3 log s(a) + log s(-a), so a = log 3.
    assert fit_temperature(np.array([1.0, 1.0, 1.0, -1.0])) == pytest.approx(np.log(3), abs=1e-6)


def test_maps_are_symmetric_and_crossfit_is_calibrated():
    s, right = _bt_data(n=6000, scale=1.5, seed=1)
    for method in ("temperature", "isotonic"):
        g = fit_calibration(s, method=method)
        grid = np.linspace(-3, 3, 13)
        np.testing.assert_allclose(g(grid) + g(-grid), 1.0, atol=1e-9)
        p = crossfit_calibration(s, np.arange(len(s)) % 2, method=method)
        ece = expected_calibration_error(*symmetric_points(p))
        assert ece < 0.03, (method, ece)
    with pytest.raises(ValueError, match="calibration must be one of"):
        fit_calibration(s, method="beta")


def test_calibration_by_group_follows_each_groups_own_noise():
    """Two subsets whose labels carry different noise (P(label right) = sigmoid(4 s) in one, sigmoid(0.5 s) in the
    other): one calibration is overconfident in the noisy subset and timid in the clean one; fitted within each
    subset, each subset's probabilities match its own law. A subset under ``min_pairs`` keeps the pooled map."""
    sa, _ = _bt_data(n=3000, scale=4.0, seed=1)
    sb, _ = _bt_data(n=3000, scale=0.5, seed=2)
    sc, _ = _bt_data(n=100, scale=2.0, seed=3)
    s = np.r_[sa, sb, sc]
    groups = np.array(["clean"] * 3000 + ["noisy"] * 3000 + ["small"] * 100, dtype=object)
    fold = np.arange(len(s)) % 2
    one = crossfit_calibration(s, fold, method="temperature")
    by, apart = crossfit_calibration_by_group(s, fold, groups, method="temperature")
    assert apart == ["clean", "noisy"]
    for g, scale in (("clean", 4.0), ("noisy", 0.5)):
        m = groups == g
        truth = 1 / (1 + np.exp(-scale * s[m]))  # each pair's true P(label right)
        assert np.abs(by[m] - truth).mean() < 0.02 < np.abs(one[m] - truth).mean()
    small = groups == "small"
    np.testing.assert_allclose(by[small], one[small])
    # the same through cleanlab-style find_label_issues_calibrated, given the groups
    _, p_wrong = find_label_issues_calibrated(s[None], fold=fold, groups=groups, return_probabilities=True)
    np.testing.assert_allclose(p_wrong, 1 - by)
    # the length method's per-pair coefficients follow the group that fitted them
    coef: dict = {}
    crossfit_calibration_by_group(s, fold, groups, method="length", length_diff=np.zeros(len(s)), coefficients=coef)
    assert np.median(coef["a"][groups == "clean"]) == pytest.approx(4.0, rel=0.15)
    assert np.median(coef["a"][groups == "noisy"]) == pytest.approx(0.5, rel=0.3)


def test_ece_and_reliability_by_hand():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 1, 1, 1])
    # bin 0 (0.1): predicted 0.1, observed 0.5; bin 8 (0.9): predicted 0.9, observed 1.0
    assert expected_calibration_error(p, y) == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    rows = reliability_table(p, y)
    assert [(r["bin"], r["count"]) for r in rows] == [(1, 2), (9, 2)]
    sp, sy = symmetric_points(np.array([0.8]), np.array([1.0]))
    assert list(sp) == [0.8, pytest.approx(0.2)] and list(sy) == [1.0, 0.0]


def test_agreement_interval_and_chance():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    a = agreement(np.array([1.0] * 60 + [-1.0] * 40))
    assert a["agreement"] == 0.6 and a["pairs"] == 100 and a["judged"]  # Wilson low 0.502
    b = agreement(np.array([1.0] * 55 + [-1.0] * 45))
    assert not b["judged"] and b["ci_low"] < 0.5 < b["ci_high"]
    c = agreement(np.array([1.0, -1.0, 0.0]), np.array([1.0, 0.0, 1.0]))  # a zero score counts half
    assert c["agreement"] == pytest.approx(2.5 / 3)
    share = estimate_wrong_share(np.array([0.1, 0.3, 0.5, 0.1]), n_boot=200)
    assert share["share"] == pytest.approx(0.25) and share["ci_low"] <= 0.25 <= share["ci_high"]


def test_length_effect_removes_a_planted_length_term():
    rng = np.random.default_rng(0)
    n = 3000
    length = rng.integers(-300, 300, n).astype(float)
    x = np.sign(length) * np.log1p(np.abs(length))
    signal = rng.normal(0, 1, n)
    diffs = np.stack([signal + 0.8 * x + rng.normal(0, 0.1, n), signal + 0.3 * x + rng.normal(0, 0.1, n)])
    diffs[1, :10] = np.nan
    fold = np.arange(n) % 2
    corrected = diffs - length_effect(diffs, length, fold)
    assert np.isnan(corrected[1, :10]).all()
    for m in range(2):
        ok = np.isfinite(corrected[m])
        assert abs(np.corrcoef(corrected[m, ok], x[ok])[0, 1]) < 0.05
        assert np.corrcoef(corrected[m, ok], signal[ok])[0, 1] > 0.95


def test_calibrated_rules_flag_by_probability_and_skip_unjudged():
    mean = np.array([-2.0, -0.2, 0.5, 3.0, -3.0])
    std = np.full(5, 0.1)
    p = np.array([0.95, 0.55, 0.3, 0.01, 0.99])
    rules = CategoryRules(rule_set="calibrated", min_confidence=0.9, strong_quantile=0.8)
    cats = categorize(mean, std, rules, p_label_wrong=p, judged=np.array([True, True, True, True, False]))
    assert list(cats) == ["likely_mislabeled", "ambiguous", "consistent", "strong", "unjudged"]
    assert list(categorize(mean, std, CategoryRules()))[:2] == ["likely_mislabeled", "likely_mislabeled"]  # paper
    with pytest.raises(ValueError, match="need p_label_wrong"):
        categorize(mean, std, rules)
    with pytest.raises(ValueError, match="rules must be one of"):
        categorize(mean, std, CategoryRules(rule_set="strict"))


def test_find_label_issues_calibrated_and_the_shape_check():
    rng = np.random.default_rng(0)
    n, m = 2000, 6
    true = np.abs(rng.normal(1.0, 1.0, n)) + 0.3
    flipped = rng.random(n) < 0.1
    diffs = np.where(flipped, -true, true) + rng.normal(0, 0.3, (m, n))
    idx, p = find_label_issues_calibrated(diffs, min_confidence=0.8, return_probabilities=True)
    assert len(idx) > 0 and flipped[idx].mean() > 0.9 and np.all(np.diff(p[idx]) <= 0)
    assert len(find_label_issues(diffs)) > len(idx) * 0.5
    with pytest.raises(ValueError, match=r"pass diffs.T"):
        find_label_issues(diffs.T)
    with pytest.raises(ValueError, match=r"pass diffs.T"):
        find_label_issues_calibrated(diffs.T)


def test_flip_posterior_matches_simulated_flips():
    """Clean labels agree with the view at rho(x); flips at 20% on top. Given the observed agreement q(x), the
    posterior says how often a pair was flipped: it matches the simulated share in every bin (ECE < 0.02),
    is 0 where the clean label always agrees and 1 where it never does, and refuses rates of 0.5 and more."""
    from rmkit.calibration import expected_calibration_error, flip_posterior

    rng = np.random.default_rng(0)
    n, pi = 200_000, 0.2
    x = rng.normal(size=n)
    rho = 1 / (1 + np.exp(-3 * x))  # P(clean label agrees with the view | x)
    agrees = rng.random(n) < rho
    flipped = rng.random(n) < pi
    observed_agrees = agrees ^ flipped
    q_true = (1 - pi) * rho + pi * (1 - rho)  # what a perfect calibration of the observed labels returns
    q = np.where(observed_agrees, q_true, 1 - q_true)  # P(the observed label | x), per pair as labelled
    p = flip_posterior(q, pi)
    assert expected_calibration_error(p, flipped) < 0.02
    assert flip_posterior(np.array([1 - pi]), pi)[0] == pytest.approx(0.0)
    assert flip_posterior(np.array([pi]), pi)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="noise_rate"):
        flip_posterior(q, 0.5)
