"""Forecast error measures, checked by hand."""

import numpy as np
import pytest

from salesfc import metrics


def test_measures_by_hand():
    actual = np.array([1000.0, 2000.0, 10.0, 4000.0])
    predicted = np.array([1100.0, 1800.0, 30.0, 4000.0])
    holiday = np.array([0, 1, 0, 0])
    m = metrics.evaluate(actual, predicted, holiday)
    assert m["n_rows"] == 4
    assert m["mae"] == pytest.approx((100 + 200 + 20 + 0) / 4)
    assert m["rmse"] == pytest.approx(np.sqrt((100**2 + 200**2 + 20**2) / 4))
    assert m["wmae"] == pytest.approx((100 + 5 * 200 + 20 + 0) / 8)        # holiday weighted 5
    assert m["mape"] == pytest.approx(100 * (0.1 + 0.1 + 0) / 3)          # the $10 row is left out
    assert m["mape_rows_excluded"] == 1
    assert m["r2"] == pytest.approx(1 - (100**2 + 200**2 + 20**2) / np.sum((actual - actual.mean()) ** 2))


def test_sums_add_across_parts():
    rng = np.random.default_rng(0)
    actual, predicted = rng.normal(5000, 2000, 1000), rng.normal(5000, 2000, 1000)
    holiday = rng.random(1000) < 0.1
    whole = metrics.evaluate(actual, predicted, holiday)
    parts = metrics.sums(actual[:300], predicted[:300], holiday[:300]) + \
        metrics.sums(actual[300:], predicted[300:], holiday[300:])
    for key, value in metrics.finish(parts).items():
        assert value == pytest.approx(whole[key])


def test_empty_input_gives_no_numbers():
    m = metrics.evaluate(np.array([]), np.array([]), np.array([]))
    assert m["n_rows"] == 0 and m["wmae"] is None


def test_intervals_by_hand():
    actual = np.array([10.0, 20.0, 30.0, 40.0])
    holiday = np.array([False, False, True, False])
    bands = {0.1: np.array([5.0, 25.0, 20.0, 35.0]), 0.5: np.array([10.0, 30.0, 30.0, 40.0]),
             0.9: np.array([15.0, 35.0, 25.0, 45.0])}
    result = metrics.intervals(actual, bands, holiday)
    # Inside p10..p90: rows 0 and 3; row 1 below, row 2 (the holiday) above.
    assert result["band"] == "p10-p90" and result["nominal"] == 0.8
    assert result["coverage"] == 0.5 and result["coverage_holiday"] == 0.0 and result["coverage_other"] == 2 / 3
    # p90 pinball: errors (actual - forecast) -5, -15, +5 (holiday, x5), -5 -> 0.1x5 + 0.1x15 + 0.9x5x5 + 0.1x5
    assert result["pinball"]["p90"] == pytest.approx((0.5 + 1.5 + 22.5 + 0.5) / 8)
    assert result["pinball"]["p50"] == pytest.approx(0.5 * (0 + 10 + 0 + 0) / 8)
    assert metrics.quantile_name(0.975) == "p97.5" and metrics.quantile_of("p97.5") == pytest.approx(0.975)
