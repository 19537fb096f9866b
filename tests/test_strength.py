"""Preference strength on hand-computed numbers, and detection of planted flips."""

import numpy as np
import pytest

from rmkit.strength import (CategoryRules, StrengthReport, categorize, find_label_issues, group_statistics,
                            pair_quality_scores, preference_strength, strength_table)


def test_eq4_mean_and_population_std_by_hand():
    diffs = np.array([[1.0, -2.0, 0.5],
                      [3.0, -4.0, np.nan]])  # member 2 did not score pair 3
    mean, std = preference_strength(diffs)
    np.testing.assert_allclose(mean, [2.0, -3.0, 0.5])
    np.testing.assert_allclose(std, [1.0, 1.0, 0.0])  # population std: sqrt(((1-2)^2 + (3-2)^2) / 2)
    mean, std = preference_strength(np.full((2, 1), np.nan))
    assert np.isnan(mean[0]) and np.isnan(std[0])
    with pytest.raises(ValueError, match="shape"):
        preference_strength(np.zeros(3))


def test_quality_is_mean_member_probability():
    q = pair_quality_scores(np.array([[0.0, np.log(3)], [np.log(3), np.nan]]))
    np.testing.assert_allclose(q, [(0.5 + 0.75) / 2, 0.75])


def test_categories_follow_the_rules():
    mean = np.array([-1.0, 0.1, 0.5, 3.0, np.nan])
    std = np.array([0.1, 0.5, 0.1, 0.1, np.nan])
    cats = categorize(mean, std, CategoryRules(strong_quantile=0.75))
    assert list(cats) == ["likely_mislabeled", "ambiguous", "consistent", "strong", "unscored"]
    assert list(categorize(mean, std, CategoryRules(mislabeled_below=0.2, strong_quantile=0.75)))[:2] == \
        ["likely_mislabeled", "likely_mislabeled"]


def test_planted_flips_are_found_first():
    rng = np.random.default_rng(0)
    n, m = 400, 10
    true = np.abs(rng.normal(1.5, 1.0, n)) + 0.2  # every clean pair truly prefers its chosen side
    flipped = rng.random(n) < 0.1
    signal = np.where(flipped, -true, true)
    diffs = signal + rng.normal(0, 0.3, (m, n))
    ranked = find_label_issues(diffs)
    k = int(flipped.sum())
    precision_at_k = flipped[ranked[:k]].mean()
    assert precision_at_k > 0.95
    mask = find_label_issues(diffs, return_mask=True)
    assert set(np.flatnonzero(mask)) == set(ranked)
    table = strength_table(diffs, ids=[f"p{i}" for i in range(n)])
    assert table.loc[table["rank"] == 1, "id"].item() == f"p{ranked[0]}"
    assert (table["category"] == "likely_mislabeled").sum() == mask.sum()


def test_group_statistics_and_report(capsys):
    rng = np.random.default_rng(1)
    mean = rng.normal(0, 2, 1000)
    std = np.abs(mean) * 0.2 + 0.1  # U-shaped by construction
    g = group_statistics(mean, std, n_groups=20)
    assert len(g) == 20 and g["pairs"].sum() == 1000
    assert g["mean_of_mean"].is_monotonic_increasing
    assert g["mean_of_std"].iloc[0] > g["mean_of_std"].iloc[10] < g["mean_of_std"].iloc[19]
    diffs = mean + rng.normal(0, 0.1, (5, 1000))
    rep = StrengthReport(strength_table(diffs), subsets=["a", "b"] * 500)
    s = rep.summary()
    assert s["pairs"] == 1000 and set(s["per_subset"]) == {"a", "b"}
    assert 0.4 < s["share_mean_below_zero"] < 0.6
    text = rep.report(n=3)
    assert "most suspect 3" in text and "most suspect" in capsys.readouterr().out
