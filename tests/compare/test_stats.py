"""Statistics of a comparison: Student t quantiles against closed forms, tables and SciPy; the paired difference by hand."""
import math
import statistics

import pytest

from visattn.comparison import paired_difference, t_quantile


def test_t_quantile_against_closed_forms_and_tables():
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-10)  # Cauchy
    p = 0.975
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
    for df, table in ((3, 3.182446), (4, 2.776445), (9, 2.262157), (29, 2.045230)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=1e-6)
    assert t_quantile(0.5, 5) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile(0.975, 0)


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 8, 30, 101):
        for p in (0.9, 0.95, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_paired_difference_by_hand():
    result = paired_difference([0.5, 0.6, 0.7], [0.4, 0.45, 0.65])
    # differences 0.10, 0.15, 0.05: mean 0.10, sd 0.05, t_{0.975, 2} = 4.302653
    half = 4.302652729911275 * 0.05 / math.sqrt(3)
    assert result["per_seed"] == pytest.approx([0.1, 0.15, 0.05])
    assert (result["mean"], result["low"], result["high"]) == pytest.approx((0.1, 0.1 - half, 0.1 + half))
    one = paired_difference([0.5], [0.4])
    assert one["mean"] == pytest.approx(0.1) and one["low"] is None and one["high"] is None
    assert statistics.fmean(result["per_seed"]) == pytest.approx(result["mean"])
