import numpy as np
import pytest

from rmkit.bon import recovery_share
from rmkit.intervals import mean_interval
from rmkit.rl import paired_gain


def test_mean_interval_on_cases_worked_by_hand():
    assert mean_interval([0.4] * 7) == pytest.approx((0.4, 0.4))  # nothing varies: no width
    # Two units 0 and 1: a resample's mean is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so the 2.5% and 97.5%
    # quantiles of 2,000 draws are 0 and 1.
    assert mean_interval([0.0, 1.0]) == (0.0, 1.0)
    lo, hi = mean_interval(np.arange(40.0))
    assert lo < 19.5 < hi and hi - lo < 10  # the mean's standard error is 11.5 / sqrt(40) = 1.8
    assert mean_interval(np.arange(40.0), seed=1) != (lo, hi)
    with pytest.raises(ValueError, match="1-D"):
        mean_interval([])


def test_paired_gain_cancels_what_the_prompts_share():
    before = np.random.default_rng(0).normal(size=30) * 5.0  # prompts differ a lot
    gain, ci, improved = paired_gain(before, before + 0.3)
    assert gain == pytest.approx(0.3) and ci == pytest.approx([0.3, 0.3]) and improved == 1.0


def test_recovery_share_is_nan_unless_the_drop_is_established():
    assert recovery_share(0.2, True, single_end=1.0, other_end=1.15) == pytest.approx(0.75)
    assert np.isnan(recovery_share(0.2, False, 1.0, 1.15))
    assert np.isnan(recovery_share(0.0, True, 1.0, 1.15))
