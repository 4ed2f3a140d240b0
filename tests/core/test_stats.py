"""Statistics: the t confidence interval and streaming moments against their definitions."""

import numpy as np
import pytest
import torch
from scipy import stats

from cliplens.core.stats import StreamingMoments, mean_ci


def test_mean_ci_is_the_student_t_interval():
    x = np.random.default_rng(0).normal(2.0, 3.0, 40)
    ci = mean_ci(x, 0.95)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert ci["n"] == 40 and ci["mean"] == pytest.approx(x.mean())
    assert ci["sd"] == pytest.approx(x.std(ddof=1))
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((lo, hi))
    narrow = mean_ci(x, 0.5)
    assert ci["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < ci["ci_high"]


def test_mean_ci_coverage_is_near_its_level():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(2000):
        ci = mean_ci(rng.normal(0.0, 1.0, 8))
        hits += ci["ci_low"] <= 0.0 <= ci["ci_high"]
    assert abs(hits / 2000 - 0.95) < 0.015


def test_mean_ci_of_fewer_than_two_values_has_no_interval():
    one = mean_ci([3.0])
    assert one["mean"] == 3.0 and np.isnan(one["ci_low"]) and np.isnan(one["sd"])
    assert np.isnan(mean_ci([])["mean"])


def test_streaming_moments_equal_numpy_in_any_chunking():
    x = np.random.default_rng(2).normal(size=(500, 7)) * np.arange(1, 8)
    whole = StreamingMoments().update(x)
    parts = StreamingMoments()
    for a, b in ((0, 3), (3, 250), (250, 251), (251, 500)):
        parts.update(torch.from_numpy(x[a:b]).float())  # float32 chunks, float64 sums
    for m in (whole, parts):
        assert m.n == 500
        np.testing.assert_allclose(m.mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.cov.numpy(), np.cov(x, rowvar=False), rtol=1e-5, atol=1e-5)
    assert whole.mean.dtype == torch.float64


def test_streaming_moments_refuse_what_they_cannot_give():
    m = StreamingMoments()
    with pytest.raises(ValueError, match="no rows"):
        m.mean
    m.update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="two rows"):
        m.cov
    with pytest.raises(ValueError, match="width 2"):
        m.update(np.ones((4, 2)))
