"""The level correction: a forecast follows the level of the latest weeks it could have known, and nothing later."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from salesfc import band, baselines, correction, infer
from salesfc.tables import TIMESTAMP, epoch_days

WEEK = band.DAYS_PER_WEEK
FIRST = 100 * WEEK


def forecasts(weeks: int = 12, horizon: int = 3, series: int = 5, bias: float = 0.9):
    """Every (series, target week, horizon) of ``weeks`` weeks from FIRST on, each forecast ``bias`` x its actual."""
    target, ahead, _ = np.meshgrid(FIRST + WEEK * np.arange(weeks), np.arange(1, horizon + 1), np.arange(series),
                                   indexing="ij")
    actual = 1_000.0 + target - FIRST
    return target.ravel(), ahead.ravel(), actual.ravel(), bias * actual.ravel()


def test_a_forecast_follows_the_level_of_the_latest_known_weeks():
    target, horizon, actual, forecast = forecasts()
    factor, after = correction.factors(target, horizon, actual, forecast, FIRST)
    made = np.maximum(target - WEEK * (horizon - 1), FIRST)
    # Made before any week after deployment is known: as forecast. Later: the 10% shortfall made good.
    np.testing.assert_array_equal(factor[made == FIRST], 1.0)
    np.testing.assert_allclose(factor[made > FIRST], 1 / 0.9)
    assert after == pytest.approx(1 / 0.9)


def test_only_next_week_forecasts_of_the_window_before_a_forecast_count():
    """Perturbation: the actuals of one week made enormous change only the forecasts made after that week's actuals
    were known and before it left the window; never a forecast made earlier, whatever its horizon."""
    target, horizon, actual, forecast = forecasts(weeks=20)
    week = FIRST + 6 * WEEK
    changed = np.where(target == week, actual * 50, actual)
    factor, _ = correction.factors(target, horizon, actual, forecast, FIRST, weeks=4)
    factor_again, _ = correction.factors(target, horizon, changed, forecast, FIRST, weeks=4)
    known_until = np.maximum(target - WEEK * (horizon - 1), FIRST) - WEEK
    moved = (known_until >= week) & (known_until < week + 4 * WEEK)
    assert moved.any() and (~moved).any()
    np.testing.assert_array_equal(factor[~moved], factor_again[~moved])
    np.testing.assert_array_equal(factor_again[moved], correction.LIMITS[1])  # clipped: a broken week, not a level


def test_weeks_before_deployment_and_later_horizons_do_not_set_it():
    target, horizon, actual, forecast = forecasts()
    earlier = target - 20 * WEEK  # the same forecasts of weeks before the model was deployed, far off
    both = [np.concatenate(pair) for pair in ((target, earlier), (horizon, horizon), (actual, actual),
                                              (forecast, forecast * 0.5))]
    factor, after = correction.factors(*both, FIRST)
    np.testing.assert_allclose(factor[:len(target)], correction.factors(target, horizon, actual, forecast,
                                                                       FIRST)[0])
    # Two weeks ahead forecasts 20% low do not move it: only next-week forecasts measure the level.
    low = np.where(horizon == 2, forecast * 0.8, forecast)
    assert correction.factors(target, horizon, actual, low, FIRST)[1] == pytest.approx(after)


def test_no_known_week_or_no_forecast_leaves_forecasts_as_they_are():
    target, horizon, actual, forecast = forecasts(weeks=1)
    factor, after = correction.factors(target, horizon, actual, forecast, FIRST)
    np.testing.assert_array_equal(factor, 1.0)
    assert after == pytest.approx(1 / 0.9)  # a forecast made after the one week is known
    factor, after = correction.factors(target, horizon, actual, np.full(len(target), np.nan), FIRST)
    assert after == 1.0 and (factor == 1.0).all()


def test_score_corrects_the_model_and_the_tree_peer_alike_and_not_the_naive_baselines():
    target, horizon, actual, forecast = forecasts(weeks=10, horizon=1, series=4)
    store = np.tile(np.arange(1, 5), 10)
    rows = pd.DataFrame({"store": store, "dept": 1, "store_dept": store * 1000 + 1,
                         TIMESTAMP: pd.Timestamp("1970-01-01", tz="UTC") + pd.to_timedelta(target, unit="D"),
                         "horizon": horizon, "weekly_sales": actual, "is_holiday": 0, "expected_sales": np.nan,
                         **{name: actual * 0.7 for name in infer.NAIVE_INPUTS}})
    train = rows.assign(**{TIMESTAMP: rows[TIMESTAMP] - pd.Timedelta(weeks=52)})
    peer = {"forecast": actual * 1.2, "chosen": {}, "iterations": 1, "fit_seconds": 0.0, "cached": True}
    deployed = rows[TIMESTAMP].min()
    result, table = infer.score(rows, {0.5: forecast}, train, peer, False, actual * 0.7, deployed, correct=True)
    later = (epoch_days(rows[TIMESTAMP]) > FIRST)
    np.testing.assert_allclose(table["forecast_model"][later], actual[later], rtol=1e-4)
    np.testing.assert_allclose(table["forecast_gradient_boosted_trees"][later], actual[later], rtol=1e-4)
    np.testing.assert_allclose(table["forecast_seasonal_naive"], np.round(actual * 0.7, 2))
    assert result["level_correction"]["next_week"] == pytest.approx(1 / 0.9)
    assert result["baselines"][baselines.PEER]["wmae"] < 0.1 * np.mean(actual)
    # Off (the default): forecasts as made, nothing for serve to apply.
    result, table = infer.score(rows, {0.5: forecast}, train, peer, False, actual * 0.7, deployed)
    np.testing.assert_allclose(table["forecast_model"], np.round(forecast, 2))
    assert "level_correction" not in result
