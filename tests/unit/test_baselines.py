"""The naive baselines and the tree peer's cache: forecasts from lagged values only, fallbacks counted right."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from salesfc import baselines
from salesfc.dataset import Preprocessor
from salesfc.tables import TIMESTAMP

NAN = np.nan
LAGS = ["sales_lag_1", "sales_lag_2", "sales_lag_4", "sales_lag_8", "sales_lag_52", "sales_rolling_mean_4"]


@pytest.fixture
def train():
    # Series 101 (dept 1) averages 100, series 201 (dept 1) 300, series 302 (dept 2) 1,000.
    return pd.DataFrame({"store_dept": [101, 101, 201, 201, 302], "dept": [1, 1, 1, 1, 2],
                         "weekly_sales": [90.0, 110.0, 200.0, 400.0, 1000.0]})


def rows_of(*rows: tuple) -> pd.DataFrame:
    """(store_dept, dept, lag_1, lag_2, lag_4, lag_8, lag_52, rolling_mean_4) per row."""
    frame = pd.DataFrame(rows, columns=["store_dept", "dept", *LAGS])
    return frame.assign(**{TIMESTAMP: pd.Timestamp("2012-01-06", tz="UTC")})


def test_every_baseline_reads_its_own_lag_when_it_is_there(train):
    rows = rows_of((101, 1, 11.0, 12.0, 14.0, 18.0, 52.0, 40.0))
    forecasts, fallbacks = baselines.naive_forecasts(train, rows)
    assert {name: float(values[0]) for name, values in forecasts.items()} == {
        "last_value": 11.0, "seasonal_naive": 52.0, "moving_average_4": 40.0, "series_mean": 100.0}
    assert fallbacks == {"last_value": 0, "seasonal_naive": 0, "moving_average_4": 0, "series_mean": 0}


def test_fallbacks_take_the_next_simpler_forecast_and_are_counted(train):
    rows = rows_of(
        (101, 1, NAN, 12.0, 14.0, 18.0, NAN, NAN),   # no lag 1: last value is lag 2; the others fall back to it
        (201, 1, NAN, NAN, NAN, NAN, NAN, NAN),      # no history at all: the series' training mean
        (999, 1, NAN, NAN, NAN, NAN, NAN, NAN),      # a series training never saw: its department's mean
        (998, 7, NAN, NAN, NAN, NAN, NAN, NAN),      # ... and of a department never seen: everyone's
        (302, 2, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0),     # everything known
    )
    forecasts, fallbacks = baselines.naive_forecasts(train, rows)
    everyone = train["weekly_sales"].mean()
    dept_1 = train.loc[train["dept"] == 1, "weekly_sales"].mean()
    np.testing.assert_allclose(forecasts["last_value"], [12.0, 300.0, dept_1, everyone, 5.0])
    np.testing.assert_allclose(forecasts["seasonal_naive"], [12.0, 300.0, dept_1, everyone, 9.0])
    np.testing.assert_allclose(forecasts["moving_average_4"], [12.0, 300.0, dept_1, everyone, 10.0])
    np.testing.assert_allclose(forecasts["series_mean"], [100.0, 300.0, dept_1, everyone, 1000.0])
    assert fallbacks == {"last_value": 4, "seasonal_naive": 4, "moving_average_4": 4, "series_mean": 2}


def test_fallback_counts_are_row_counts_between_zero_and_the_rows(train):
    # The report once showed -77,483 series-mean fallbacks: ~ applied to the count instead of the mask.
    rng = np.random.default_rng(0)
    keys = rng.choice([101, 201, 302, 404, 505], size=200)
    lags = np.where(rng.random((200, len(LAGS))) < 0.3, NAN, rng.random((200, len(LAGS))) * 100)
    rows = pd.DataFrame(lags, columns=LAGS).assign(store_dept=keys, dept=keys % 100,
                                                   **{TIMESTAMP: pd.Timestamp("2012-01-06", tz="UTC")})
    _, fallbacks = baselines.naive_forecasts(train, rows)
    for name, count in fallbacks.items():
        assert isinstance(count, int) and 0 <= count <= len(rows), (name, count)
    assert fallbacks["series_mean"] == int(np.isin(keys, [404, 505]).sum())
    assert fallbacks["last_value"] == int(np.isnan(lags[:, 0]).sum())
    # Counted over some rows only (the scores count next week's rows of a multi-horizon table): as the subset alone.
    some = rng.random(200) < 0.4
    assert baselines.naive_forecasts(train, rows, counted=some)[1] == \
        baselines.naive_forecasts(train, rows[some].reset_index(drop=True))[1]


def test_no_fallback_when_every_series_was_in_training(train):
    rows = rows_of(*[(key, key % 100, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0) for key in (101, 201, 302)])
    assert baselines.naive_forecasts(train, rows)[1]["series_mean"] == 0


class FakePreprocessor:
    params = {"inputs": ["a"]}


def test_tree_peer_is_fitted_once_per_key_and_refitted_for_other_rows(tmp_path, monkeypatch):
    fits = []

    def fake_fit(preprocessor, train, val, rows, seed, refit=False):
        fits.append(len(rows) + 100 * refit)
        return {"forecast": np.arange(len(rows), dtype=float), "chosen": {}, "iterations": 1, "val_wmae": 1.0,
                "trials": [], "fit_seconds": 0.0}

    monkeypatch.setattr(baselines, "_fit_tree_peer", fake_fit)
    weeks = pd.date_range("2012-01-06", periods=3, freq="7D", tz="UTC")
    rows = pd.DataFrame({"store_dept": [101, 201, 302], TIMESTAMP: weeks})
    args = dict(cache=tmp_path, data="fingerprint", split={"test_start": "2012-01-06"})
    first = baselines.tree_peer(FakePreprocessor(), None, None, rows, **args)
    second = baselines.tree_peer(FakePreprocessor(), None, None, rows, **args)
    assert fits == [3] and not first["cached"] and second["cached"]
    np.testing.assert_array_equal(second["forecast"], [0.0, 1.0, 2.0])
    # Other rows under the same key (a changed store), other data: a new fit, never a stale forecast.
    baselines.tree_peer(FakePreprocessor(), None, None, rows.iloc[:2], **args)
    baselines.tree_peer(FakePreprocessor(), None, None, rows, **{**args, "data": "other"})
    # The peer of a refitted network is refitted too: its own key.
    baselines.tree_peer(FakePreprocessor(), None, None, rows, refit=True, **args)
    assert baselines.tree_peer(FakePreprocessor(), None, None, rows, refit=True, **args)["cached"]
    assert fits == [3, 2, 3, 103]


def test_the_peer_takes_a_category_as_a_number_past_the_trees_limit():
    def categories(stores: int) -> Preprocessor:
        return Preprocessor({"categories": [{"name": "store", "values": list(range(1, stores + 1))},
                                            {"name": "dept", "values": [1, 2, 3]}]})
    # 254 stores + the code for unseen ones: the most a tree takes as a category.
    assert baselines.peer_categorical(categories(254), 10) == [10, 11]
    assert baselines.peer_categorical(categories(255), 10) == [11]
    assert baselines.peer_categorical(categories(4_500), 7) == [8]


def test_the_seasonal_naive_of_a_later_week_is_that_week_a_year_before():
    """At any horizon the seasonal naive is the target week's sales 52 weeks earlier (known at the origin), and at
    horizon 1 it is the row's own sales_lag_52, what the features computed from their calendar grid."""
    from salesfc import features
    from salesfc.data import synthetic

    out = features.engineer(synthetic.generate("tiny", seed=3))
    rows = out.labels.merge(out.sales_history[["store_dept", TIMESTAMP, *LAGS]], on=["store_dept", TIMESTAMP])
    seasonal = baselines.year_before(out.labels, rows)
    lag = rows["sales_lag_52"].to_numpy()
    np.testing.assert_array_equal(np.isnan(seasonal), np.isnan(lag))
    np.testing.assert_array_equal(seasonal[~np.isnan(lag)], lag[~np.isnan(lag)])
    assert (~np.isnan(lag)).sum() > len(rows) / 2
    # Forecast with naive_forecasts, the given seasonal value is used (falling back to the last value when missing).
    forecasts, _ = baselines.naive_forecasts(out.labels, rows, seasonal)
    known = ~np.isnan(seasonal)
    np.testing.assert_array_equal(forecasts["seasonal_naive"][known], seasonal[known])


def test_the_peer_beyond_one_week_learns_from_training_weeks_and_forecasts_every_pair(tmp_path):
    """Its examples are later weeks of origins in the weeks before the held-out ones, a training target before the
    validation weeks and a validation target in them; it forecasts each asked (origin, step) pair, and its cache
    answers the same pairs only."""
    from salesfc import features
    from salesfc.data import synthetic
    from salesfc.dataset import Ahead, Split

    out = features.engineer(synthetic.generate("tiny", seed=2))
    frame = out.labels.merge(out.sales_history.drop(columns=["store", "dept"]), on=["store_dept", TIMESTAMP])
    frame = frame.merge(out.store_context, on=["store", TIMESTAMP])
    split = Split.from_weeks(frame[TIMESTAMP], 13, 26)
    known = frame[frame[TIMESTAMP] < split.test_start].reset_index(drop=True)
    pre = Preprocessor.fit(known[split.part(known[TIMESTAMP]) == 0])
    ahead = Ahead.of(known, 4)
    part = split.part_of_days(ahead.target_days)
    examples = baselines._ahead_examples(pre, known, ahead, ahead.found & (part == 0) & (np.arange(4) > 0),
                                         np.random.default_rng(0))
    steps = examples.x[:, -4].astype(int) - 1
    assert set(steps) == {1, 2, 3}  # horizons 2 to 4, never 1
    assert len(steps) == (ahead.found & (part == 0) & (np.arange(4) > 0)).any(axis=1).sum()

    origins = frame[frame[TIMESTAMP] >= split.test_start - pd.Timedelta(weeks=3)].reset_index(drop=True)
    at = np.repeat(np.arange(len(origins)), 3)
    step = np.tile([1, 2, 3], len(origins))
    peer = baselines.tree_peer_ahead(pre, known, split, origins, at, step, cache=tmp_path, data="d")
    assert peer["forecast"].shape == (len(at),) and np.isfinite(peer["forecast"]).all() and not peer["cached"]
    assert peer["chosen"] in baselines.PEER_GRID
    again = baselines.tree_peer_ahead(pre, known, split, origins, at, step, cache=tmp_path, data="d")
    assert again["cached"] and np.array_equal(again["forecast"], peer["forecast"])
    assert baselines.cached_peer_ahead(pre, origins, at[:-1], step[:-1], cache=tmp_path, data="d", split=split) is None
