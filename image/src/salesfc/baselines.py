"""What the model has to beat, computed from the same feature rows it sees.

The naive forecasts read lagged values that are in every row (all from weeks before the one forecast). When a
series has no value where a baseline looks (a gap, or no history yet), it falls back to the next simpler forecast
and the report counts how often that happened, so every forecaster is scored on exactly the same rows:

* last value: the most recent reported week (lag 1, else lag 2, 4 or 8), else the series' training mean;
* seasonal naive: the same week last year (lag 52), else last value;
* 4-week moving average: mean of the 4 weeks before, else last value;
* series mean: the mean of the series over the training weeks, else its department's, else everyone's.

The peer: scikit-learn's HistGradientBoostingRegressor on the same features (raw values, missing values as
they are, store/department/week/type as categories), trained on the training weeks with early stopping on the
validation weeks and the same holiday weighting. What a data scientist would try first, and what we aim to beat.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from salesfc.dataset import CATEGORIES, HOLIDAY_WEIGHT, NOT_FEATURES

log = logging.getLogger(__name__)

NAIVE = ("last_value", "seasonal_naive", "moving_average_4", "series_mean")


def _first_known(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    result = np.full(len(frame), np.nan)
    for column in columns:
        values = frame[column].to_numpy(dtype=float, na_value=np.nan)
        result = np.where(np.isnan(result), values, result)
    return result


def series_means(train: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    by_series = train.groupby("store_dept")["weekly_sales"].mean()
    by_dept = train.groupby("dept")["weekly_sales"].mean()
    mean = rows["store_dept"].map(by_series).to_numpy(dtype=float)
    mean = np.where(np.isnan(mean), rows["dept"].map(by_dept).to_numpy(dtype=float), mean)
    return np.where(np.isnan(mean), float(train["weekly_sales"].mean()), mean)


def naive_forecasts(train: pd.DataFrame, rows: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Forecasts of the naive baselines for ``rows``, and how many rows each had to fall back on."""
    mean = series_means(train, rows)
    recent = _first_known(rows, ["sales_lag_1", "sales_lag_2", "sales_lag_4", "sales_lag_8"])
    last = np.where(np.isnan(recent), mean, recent)
    seasonal = rows["sales_lag_52"].to_numpy(dtype=float, na_value=np.nan)
    average = rows["sales_rolling_mean_4"].to_numpy(dtype=float, na_value=np.nan)
    forecasts = {
        "last_value": last,
        "seasonal_naive": np.where(np.isnan(seasonal), last, seasonal),
        "moving_average_4": np.where(np.isnan(average), last, average),
        "series_mean": mean,
    }
    lag_1 = rows["sales_lag_1"].to_numpy(dtype=float, na_value=np.nan)
    fallbacks = {"last_value": int(np.isnan(lag_1).sum()), "seasonal_naive": int(np.isnan(seasonal).sum()),
                 "moving_average_4": int(np.isnan(average).sum()),
                 "series_mean": int(~rows["store_dept"].isin(train["store_dept"]).sum())}
    return forecasts, fallbacks


def _gbt_matrix(frame: pd.DataFrame, columns: list[str], type_codes: dict[str, int]) -> np.ndarray:
    numeric = frame[columns].to_numpy(dtype=float, na_value=np.nan)
    categorical = np.column_stack([
        frame["store"].to_numpy(dtype=float), frame["dept"].to_numpy(dtype=float),
        frame["week_of_year"].to_numpy(dtype=float),
        frame["store_type"].map(type_codes).to_numpy(dtype=float),
    ])
    return np.hstack([numeric, categorical])


def gradient_boosted_trees(train: pd.DataFrame, val: pd.DataFrame, rows: pd.DataFrame, seed: int = 0) -> dict:
    from sklearn.ensemble import HistGradientBoostingRegressor

    columns = [c for c in train.columns if c not in NOT_FEATURES and c not in CATEGORIES
               and pd.api.types.is_numeric_dtype(train[c])]
    type_codes = {value: code for code, value in enumerate(sorted(train["store_type"].astype(str).unique()))}
    n_numeric = len(columns)

    def weights(frame: pd.DataFrame) -> np.ndarray:
        return np.where(frame["is_holiday"].to_numpy() > 0, HOLIDAY_WEIGHT, 1.0)

    started = time.perf_counter()
    model = HistGradientBoostingRegressor(
        learning_rate=0.1, max_iter=500, max_leaf_nodes=63, min_samples_leaf=40,
        categorical_features=[n_numeric, n_numeric + 1, n_numeric + 2, n_numeric + 3], early_stopping=True,
        n_iter_no_change=20, random_state=seed)
    model.fit(_gbt_matrix(train, columns, type_codes), train["weekly_sales"].to_numpy(dtype=float),
              sample_weight=weights(train), X_val=_gbt_matrix(val, columns, type_codes),
              y_val=val["weekly_sales"].to_numpy(dtype=float), sample_weight_val=weights(val))
    seconds = time.perf_counter() - started
    log.info("gradient-boosted trees: %d iterations in %.1f s", model.n_iter_, seconds)
    return {"forecast": model.predict(_gbt_matrix(rows, columns, type_codes)), "iterations": int(model.n_iter_),
            "fit_seconds": round(seconds, 2)}
