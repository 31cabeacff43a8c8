"""Features without leakage, on a calendar grid."""

import numpy as np
import pandas as pd
import pytest

from salesfc import features
from salesfc.data import synthetic
from salesfc.tables import TIMESTAMP, store_dept


@pytest.fixture(scope="module")
def raw():
    return synthetic.generate("tiny", seed=5)


def test_no_feature_of_week_t_reads_week_t_or_later(raw):
    """Change every sale from week t on: no feature of any row of week t (or before) may change."""
    base = features.engineer(raw).sales_history
    weeks = np.sort(raw.sales["date"].unique())
    for t in (weeks[1], weeks[60], weeks[-1]):
        changed = raw.sales.copy()
        later = changed["date"] >= t
        changed.loc[later, "weekly_sales"] = changed.loc[later, "weekly_sales"] * 7 + 12345.0
        other = type(raw)(changed, raw.external, raw.stores, raw.source)
        altered = features.engineer(other).sales_history
        cutoff = pd.Timestamp(t, tz="UTC")
        left = base[base[TIMESTAMP] <= cutoff].reset_index(drop=True)
        right = altered[altered[TIMESTAMP] <= cutoff].reset_index(drop=True)
        pd.testing.assert_frame_equal(left, right)
        # ...while the week after t does change (the test can fail).
        after = base[TIMESTAMP] == cutoff + pd.Timedelta(weeks=1)  # after the last week: the week to forecast
        assert after.any()
        assert not base.loc[after, "sales_lag_1"].equals(altered.loc[after.to_numpy(), "sales_lag_1"])


def test_lags_count_calendar_weeks_across_gaps():
    dates = pd.date_range("2010-02-05", periods=60, freq="7D")
    keep = np.ones(60, bool)
    keep[[10, 11, 30]] = False  # the series did not report three weeks
    sales = pd.DataFrame({"store": 1, "dept": 5, "date": dates[keep], "weekly_sales": np.arange(60.0)[keep] * 10,
                          "is_holiday": False, "expected_sales": np.nan})
    external = pd.DataFrame({"store": 1, "date": pd.date_range("2010-02-05", periods=62, freq="7D"),
                             "temperature": 50.0, "fuel_price": 3.0, "markdown1": np.nan, "markdown2": np.nan,
                             "markdown3": np.nan, "markdown4": np.nan, "markdown5": np.nan, "cpi": 200.0,
                             "unemployment": 7.0, "is_holiday": False})
    stores = pd.DataFrame({"store": [1], "type": ["A"], "size": [150_000]})
    out = features.engineer(type(synthetic.generate("tiny"))(sales, external, stores, "test"))
    history = out.sales_history.set_index(TIMESTAMP)
    week = lambda i: pd.Timestamp(dates[i], tz="UTC") if i < 60 else out.next_week.tz_localize("UTC")  # noqa: E731
    assert history.loc[week(12), "sales_lag_1"] != history.loc[week(12), "sales_lag_1"]   # week 11 missing: NaN
    assert history.loc[week(12), "sales_lag_4"] == 80.0                                   # week 8, not a row shift
    assert np.isnan(history.loc[week(13), "sales_lag_2"])                                  # week 11 missing
    assert history.loc[week(14), "sales_lag_2"] == 120.0                                   # week 12
    assert history.loc[week(59), "sales_lag_52"] == 70.0
    assert np.isnan(history.loc[week(40), "sales_lag_52"])                                 # first year: missing
    # Rolling mean of the 4 weeks before week 13 = weeks 9..12, of which 9 and 12 reported.
    assert history.loc[week(13), "sales_rolling_mean_4"] == pytest.approx((90 + 120) / 2)
    assert history.loc[week(13), "weeks_of_history"] == 11
    # The week after the data is there, with last week's sales as lag 1.
    assert out.next_week == pd.Timestamp(dates[-1]) + pd.Timedelta(weeks=1)
    assert history.loc[week(60), "sales_lag_1"] == 590.0
    assert list(out.forecast_series) == [int(store_dept(1, 5))]


def test_rolling_statistics_match_pandas_on_shifted_windows(raw):
    history = features.engineer(raw).sales_history
    series = raw.sales[(raw.sales["store"] == 1) & (raw.sales["dept"] == 2)].set_index("date")["weekly_sales"]
    grid = series.reindex(pd.date_range(series.index.min(), series.index.max() + pd.Timedelta(weeks=1), freq="7D"))
    expected_mean = grid.shift(1).rolling(12, min_periods=6).mean()
    expected_std = grid.shift(1).rolling(12, min_periods=6).std()
    mine = history[history["store_dept"] == store_dept(1, 2)].set_index(TIMESTAMP)
    idx = mine.index.tz_localize(None)
    np.testing.assert_allclose(mine["sales_rolling_mean_12"].to_numpy(), expected_mean.reindex(idx).to_numpy(),
                               rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(mine["sales_rolling_std_12"].to_numpy(), expected_std.reindex(idx).to_numpy(),
                               rtol=1e-7, atol=1e-6, equal_nan=True)


def test_store_year_over_year_pools_the_store_departments_that_have_both_years(raw):
    history = features.engineer(raw).sales_history
    weeks = pd.date_range(raw.sales["date"].min(), raw.sales["date"].max() + pd.Timedelta(weeks=1), freq="7D")
    grid = raw.sales.pivot_table(index="date", columns=["store", "dept"], values="weekly_sales").reindex(weeks)
    checked = 0
    for w in features.STORE_YOY_WINDOWS:
        recent = grid.shift(1).rolling(w, min_periods=max(2, w // 2)).mean()
        year_ago = recent.shift(52)
        both = recent.notna() & year_ago.notna()
        expected = (recent.where(both).T.groupby(level="store").sum().T
                    / year_ago.where(both).T.groupby(level="store").sum().T)
        got = history.pivot_table(index=TIMESTAMP, columns="store", values=f"store_sales_yoy_{w}", aggfunc="first",
                                  dropna=False)
        got.index = got.index.tz_localize(None)
        # Every department of a store carries the same value.
        assert (history.groupby(["store", TIMESTAMP])[f"store_sales_yoy_{w}"].nunique() <= 1).all()
        np.testing.assert_allclose(got.to_numpy(), expected.reindex(index=got.index, columns=got.columns).to_numpy(),
                                   rtol=1e-9, equal_nan=True)
        assert got.iloc[:52].isna().all().all() and got.notna().sum().sum() > 100  # a year's history first
        checked += 1
    assert checked == 2


def test_store_context_and_labels(raw):
    out = features.engineer(raw)
    context = out.store_context
    assert context[TIMESTAMP].max() == pd.Timestamp(out.next_week, tz="UTC")
    markdowns = context[[f"markdown{k}" for k in range(1, 6)]]
    np.testing.assert_allclose(context["total_markdown"], markdowns.fillna(0).sum(axis=1))
    assert (context["has_markdown"] == markdowns.notna().any(axis=1).astype(int)).all()
    assert set(context["store_type"]) <= {"A", "B", "C"}
    assert len(out.labels) == len(raw.sales)
    assert out.labels[TIMESTAMP].dt.tz is not None
    # Every label row has its feature row (same key and week).
    joined = out.labels.merge(out.sales_history, on=["store_dept", TIMESTAMP], how="left", indicator=True)
    assert (joined["_merge"] == "both").all()


def test_dates_off_the_weekly_grid_are_rejected(raw):
    from salesfc.errors import UserError

    bad = raw.sales.copy()
    bad.loc[5, "date"] = bad.loc[5, "date"] + pd.Timedelta(days=2)
    with pytest.raises(UserError, match="not a whole number of weeks"):
        features.engineer(type(raw)(bad, raw.external, raw.stores, raw.source))
