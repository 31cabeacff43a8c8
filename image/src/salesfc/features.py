"""Feature engineering without leakage: from the raw tables to the three tables the feature store serves.

Every sales feature of week t is computed from weeks strictly before t, on a calendar grid: each series gets one
slot per week, a week it did not report stays empty, and "lag 52" is the slot 52 weeks back, not the 52nd row
back (the real data has gaps, and a row-shift lag there reads the wrong week). Rolling statistics use the
``w`` weeks before t (a shift by one before the window) and need half of them reported.

Besides the weeks with sales, each series that reported in the last ``ACTIVE_WEEKS`` weeks gets a row for the
week after the data ends: the features to forecast next week with, which materialization puts online.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from salesfc.data import MARKDOWNS, RawData
from salesfc.errors import UserError
from salesfc.tables import TIMESTAMP, split_store_dept, store_dept, utc_weeks

LAGS = (1, 2, 4, 8, 51, 52, 53)
WINDOWS = (4, 8, 12, 52)
YEAR = 52
ACTIVE_WEEKS = 4
# Holiday alignment: how far a week is from the holiday that drives it, in weeks, clipped to this many either side.
HOLIDAY_REACH = 8.0
# Kaggle flags four holidays; the code tells them apart (months as in the Walmart data).
HOLIDAY_CODES = {2: 1, 9: 2, 11: 3, 12: 4, 1: 4}  # Super Bowl, Labor Day, Thanksgiving, Christmas (week after)

# The store's year over year: its departments' sales in the w weeks before t over the same weeks a year earlier.
STORE_YOY_WINDOWS = (4, 12)
SALES_FEATURES = ([f"sales_lag_{k}" for k in LAGS] + [f"sales_rolling_mean_{w}" for w in WINDOWS]
                  + [f"sales_rolling_std_{w}" for w in WINDOWS] + ["sales_year_ago_mean_4", "weeks_of_history"]
                  + [f"store_sales_yoy_{w}" for w in STORE_YOY_WINDOWS])
CONTEXT_FEATURES = ["is_holiday", "holiday_code", "weeks_to_thanksgiving", "weeks_to_christmas", "week_of_year",
                    "month", "temperature", "fuel_price", "cpi", "unemployment", *MARKDOWNS, "total_markdown",
                    "has_markdown", "store_type", "store_size"]


@dataclass
class Engineered:
    sales_history: pd.DataFrame
    store_context: pd.DataFrame
    labels: pd.DataFrame
    first_week: pd.Timestamp
    last_week: pd.Timestamp
    next_week: pd.Timestamp
    forecast_series: np.ndarray  # store_dept keys with a row for next_week


def week_numbers(dates: pd.Series, origin: pd.Timestamp, what: str) -> np.ndarray:
    days = (dates - origin).dt.days.to_numpy()
    off = days % 7 != 0
    if off.any():
        bad = dates.iloc[int(np.flatnonzero(off)[0])]
        raise UserError(f"{what}: {bad:%Y-%m-%d} is not a whole number of weeks after {origin:%Y-%m-%d}; "
                        "dates must be weekly on the same weekday")
    return days // 7


def weeks_earlier(values: np.ndarray, k: int) -> np.ndarray:
    """A (series, weeks) array shifted k weeks later: each slot holds its series' value of k weeks before (NaN in the
    first k weeks)."""
    shifted = np.full_like(values, np.nan)
    shifted[:, k:] = values[:, :-k]
    return shifted


def sales_grid_features(grid: np.ndarray) -> dict[str, np.ndarray]:
    """Features for every (series, week) slot from a (series, weeks) array of sales with NaN for empty weeks.

    Column t of each output only reads columns < t of ``grid``.
    """
    n_series, n_weeks = grid.shape
    out: dict[str, np.ndarray] = {}
    for k in LAGS:
        out[f"sales_lag_{k}"] = weeks_earlier(grid, k)
    reported = ~np.isnan(grid)
    values = np.where(reported, grid, 0.0)
    # Prefix sums with a leading zero: prefix[:, t] covers weeks 0..t-1, i.e. strictly before t.
    zeros = np.zeros((n_series, 1))
    count = np.concatenate([zeros, np.cumsum(reported, axis=1)], axis=1)[:, :n_weeks]
    total = np.concatenate([zeros, np.cumsum(values, axis=1)], axis=1)[:, :n_weeks]
    squares = np.concatenate([zeros, np.cumsum(values ** 2, axis=1)], axis=1)[:, :n_weeks]
    for w in WINDOWS:
        def window(prefix: np.ndarray) -> np.ndarray:
            shifted = np.zeros_like(prefix)
            shifted[:, w:] = prefix[:, :-w]
            return prefix - shifted

        n, s, q = window(count), window(total), window(squares)
        enough = n >= max(2, w // 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s / n
            variance = np.clip((q - s * s / n) / (n - 1), 0, None)
        out[f"sales_rolling_mean_{w}"] = np.where(enough, mean, np.nan)
        out[f"sales_rolling_std_{w}"] = np.where(enough, np.sqrt(variance), np.nan)
    # The 4 weeks before the same week last year: with sales_lag_52, last year's seasonal lift of this week
    # (lag_52 / year_ago_mean_4), which carries over to this year's level (sales_rolling_mean_4).
    out["sales_year_ago_mean_4"] = weeks_earlier(out["sales_rolling_mean_4"], YEAR)
    out["weeks_of_history"] = count.astype(np.int64)
    return out


def store_yoy(features: dict[str, np.ndarray], store: np.ndarray) -> dict[str, np.ndarray]:
    """Per (series, week) slot: its store's sales of the w weeks before t over those of the same weeks a year earlier,
    summed over the store's departments that have both (NaN where none has).

    A shift of the whole store (a promotion programme, a new competitor, the economy) shows here pooled over its
    departments, about as precise as one department's noise over the square root of their number, where one
    series' recent weeks against its own year-ago weeks are mostly noise. Both sums read weeks before t only."""
    _, index = np.unique(store, return_inverse=True)
    out = {}
    for w in STORE_YOY_WINDOWS:
        recent = features[f"sales_rolling_mean_{w}"]
        year_ago = weeks_earlier(recent, YEAR)
        both = ~np.isnan(recent) & ~np.isnan(year_ago)
        sums = np.zeros((2, index.max() + 1, recent.shape[1]))
        np.add.at(sums[0], index, np.where(both, recent, 0.0))
        np.add.at(sums[1], index, np.where(both, year_ago, 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(sums[1] > 0, sums[0] / sums[1], np.nan)
        out[f"store_sales_yoy_{w}"] = ratio[index]
    return out


def thanksgiving(year: int) -> pd.Timestamp:
    """The fourth Thursday of November."""
    first = pd.Timestamp(year=year, month=11, day=1)
    return first + pd.Timedelta(days=(3 - first.dayofweek) % 7 + 21)


def weeks_to(dates: pd.Series, holiday) -> np.ndarray:
    """Signed weeks from each week's last day to the nearest occurrence of ``holiday(year)`` (positive: before it),
    clipped to HOLIDAY_REACH. Holidays move with the calendar; this keeps the weeks around them aligned by event."""
    days = dates.to_numpy(dtype="datetime64[ns]")
    best = np.full(len(days), np.inf)
    for year in range(int(dates.dt.year.min()) - 1, int(dates.dt.year.max()) + 2):
        gap = (np.datetime64(holiday(year), "ns") - days) / np.timedelta64(7, "D")
        best = np.where(np.abs(gap) < np.abs(best), gap, best)
    return np.clip(best, -HOLIDAY_REACH, HOLIDAY_REACH)


def christmas(year: int) -> pd.Timestamp:
    return pd.Timestamp(year=year, month=12, day=25)


# The calendar of a week that has not happened yet, from its date alone: what a forecast of a later week knows of it
# at the origin (salesfc.model looks it up for every target week). The same functions as the store context's columns.
def calendar(dates: pd.Series) -> dict[str, np.ndarray]:
    return {"weeks_to_thanksgiving": weeks_to(dates, thanksgiving),
            "weeks_to_christmas": weeks_to(dates, christmas),
            "week_of_year": dates.dt.isocalendar().week.astype(np.int64).to_numpy()}


def engineer(raw: RawData) -> Engineered:
    sales = raw.sales.sort_values(["store", "dept", "date"], kind="stable").reset_index(drop=True)
    origin = sales["date"].min()
    week = week_numbers(sales["date"], origin, "sales")
    last = int(week.max())
    n_weeks = last + 2  # the observed weeks plus next week

    keys = store_dept(sales["store"], sales["dept"])
    series_keys, series_index = np.unique(keys, return_inverse=True)
    grid = np.full((len(series_keys), n_weeks), np.nan)
    grid[series_index, week] = sales["weekly_sales"].to_numpy()
    features = sales_grid_features(grid)
    features.update(store_yoy(features, split_store_dept(series_keys)[0]))

    # Rows: every reported week, plus next week for series still active.
    reported = ~np.isnan(grid)
    active = reported[:, max(0, last - ACTIVE_WEEKS + 1):last + 1].any(axis=1)
    wanted = reported.copy()
    wanted[:, last + 1] = active
    # Week-major: with series_keys sorted, the rows come out in (week, store_dept) order, the tables' order, with no
    # sort (and no second copy of the table) after.
    rows_week, rows_series = np.nonzero(wanted.T)
    week_dates = origin + pd.to_timedelta(np.arange(n_weeks) * 7, unit="D")
    row_keys = series_keys[rows_series]
    row_store, row_dept = split_store_dept(row_keys)
    history = pd.DataFrame({
        "store_dept": row_keys,
        "store": row_store,
        "dept": row_dept,
        TIMESTAMP: utc_weeks(week_dates[rows_week]),
    })
    for name in list(features):  # each grid freed once its column is out: the peak is one grid, not all of them
        history[name] = features.pop(name)[rows_series, rows_week]

    labels = pd.DataFrame({
        "store_dept": keys,
        "store": sales["store"].to_numpy(),
        "dept": sales["dept"].to_numpy(),
        TIMESTAMP: utc_weeks(sales["date"]),
        "weekly_sales": sales["weekly_sales"].to_numpy(dtype=float),
        "expected_sales": sales["expected_sales"].to_numpy(dtype=float),
    }).sort_values([TIMESTAMP, "store_dept"], kind="stable").reset_index(drop=True)

    context = store_context(raw, origin, week_dates[-1])
    needed = history[["store", TIMESTAMP]].drop_duplicates()
    missing = needed.merge(context[["store", TIMESTAMP]], how="left", indicator=True)
    missing = missing[missing["_merge"] == "left_only"]
    if len(missing):
        first = missing.iloc[0]
        raise UserError(f"store context: no row for store {first['store']} in the week of "
                        f"{first[TIMESTAMP]:%Y-%m-%d} ({len(missing)} store-weeks missing); the features table must "
                        "cover every week with sales and the week after")
    return Engineered(
        sales_history=history,
        store_context=context,
        labels=labels,
        first_week=origin,
        last_week=week_dates[last],
        next_week=week_dates[last + 1],
        forecast_series=series_keys[active],
    )


def store_context(raw: RawData, first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
    ext = raw.external[(raw.external["date"] >= first) & (raw.external["date"] <= last)]
    ext = ext.sort_values(["date", "store"], kind="stable").reset_index(drop=True)
    week_numbers(ext["date"], first, "store context")
    stores = raw.stores.set_index("store")
    unknown = ~ext["store"].isin(stores.index)
    if unknown.any():
        raise UserError(f"store context: store {ext['store'][unknown].iloc[0]} is not among the stores")
    marks = ext[MARKDOWNS]
    is_holiday = ext["is_holiday"].astype(np.int64).to_numpy()
    context = pd.DataFrame({
        "store": ext["store"].to_numpy(dtype=np.int64),
        TIMESTAMP: utc_weeks(ext["date"]),
        "is_holiday": is_holiday,
        "holiday_code": is_holiday * ext["date"].dt.month.map(HOLIDAY_CODES).fillna(0).astype(np.int64).to_numpy(),
        **calendar(ext["date"]),
        "month": ext["date"].dt.month.astype(np.int64).to_numpy(),
    })
    for column in ("temperature", "fuel_price", "cpi", "unemployment", *MARKDOWNS):
        context[column] = ext[column].to_numpy(dtype=float)
    context["total_markdown"] = marks.sum(axis=1, min_count=1).fillna(0.0).to_numpy()
    context["has_markdown"] = marks.notna().any(axis=1).astype(np.int64).to_numpy()
    context["store_type"] = stores.loc[ext["store"], "type"].astype(str).to_numpy()
    context["store_size"] = stores.loc[ext["store"], "size"].astype(np.int64).to_numpy()
    return context
