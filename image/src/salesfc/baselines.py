"""What the model has to beat, computed from the same feature rows it sees.

The naive forecasts read lagged values that are in every row (all from weeks before the one forecast). When a
series has no value where a baseline looks (a gap, or no history yet), it falls back to the next simpler forecast
and the report counts how often that happened, so every forecaster is scored on exactly the same rows:

* last value: the most recent reported week (lag 1, else lag 2, 4 or 8), else the series' training mean;
* seasonal naive: the same week last year (lag 52), else last value;
* 4-week moving average: mean of the 4 weeks before, else last value;
* series mean: the mean of the series over the training weeks, else its department's, else everyone's.

The peer, what a data scientist would pick instead of a network: scikit-learn's HistGradientBoostingRegressor
with absolute error, on exactly what the network sees: the same preprocessed inputs, the same scale-aware target
(sales / series scale) and the same sample weights (scale x holiday weight), so its loss is the dollar WMAE too.
Store, department, week of year and store type are categorical (a store id with more values than the trees take
is a number). A small search (``PEER_GRID``) is fitted on the training weeks, each with early stopping on the
validation weeks, and the one with the lowest validation WMAE forecasts; the weeks being forecast play no part.
Its forecasts are cached per data version, split and settings (``<workdir>/baselines/``, parquet and JSON: no
pickled model on a shared volume), so `infer` and `backtest` fit it once. On data of more than ``PEER_MAX_ROWS``
label rows, `infer` fits it on a sample of whole series (one part of the series hash, about that many rows; it
still forecasts every series): the trees need their whole training matrix in one process, in float64, and a chain
of thousands of stores would not fit in one pod's memory.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from salesfc import progress
from salesfc.dataset import Preprocessor
from salesfc.features import YEAR
from salesfc.tables import EPOCH_DAY, TIMESTAMP, SeriesWeeks, epoch_days
from salesfc.workspace import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

NAIVE = ("last_value", "seasonal_naive", "moving_average_4", "series_mean")
PEER = "gradient_boosted_trees"
# The search: a few shapes of tree, each with early stopping. Settings a data scientist would try first; the
# learning rate is small enough that early stopping, not max_iter, ends every fit.
PEER_GRID = (
    {"learning_rate": 0.1, "max_leaf_nodes": 63, "min_samples_leaf": 40, "l2_regularization": 0.0},
    {"learning_rate": 0.1, "max_leaf_nodes": 255, "min_samples_leaf": 100, "l2_regularization": 1.0},
    {"learning_rate": 0.05, "max_leaf_nodes": 127, "min_samples_leaf": 20, "l2_regularization": 0.0},
)
PEER_MAX_ITER = 3000
PEER_PATIENCE = 30
PEER_MAX_ROWS = 1_000_000


def peer_parts(label_rows: int) -> int:
    """Into how many parts of series the label rows are cut for the peer's sample (1: no sample, every series)."""
    return max(1, math.ceil(label_rows / PEER_MAX_ROWS))


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


def year_before(labels: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Each row's series' sales 52 weeks before the row's week (NaN where not reported): the seasonal naive forecast
    at any horizon up to 52 weeks, known at the origin. At horizon 1 it is the row's ``sales_lag_52``."""
    index = SeriesWeeks(labels["store_dept"], epoch_days(labels[TIMESTAMP]))
    row, found = index.find(rows["store_dept"], epoch_days(rows[TIMESTAMP]) - 7 * YEAR)
    return np.where(found, labels["weekly_sales"].to_numpy(dtype=float)[row], np.nan)


def naive_forecasts(train: pd.DataFrame, rows: pd.DataFrame, seasonal: np.ndarray | None = None,
                    counted: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Forecasts of the naive baselines for ``rows``, and how many rows (of those ``counted`` marks, default all)
    each had to fall back on. The lags are the origin's (a forecast h weeks ahead carries the last value forward h
    weeks); ``seasonal``, the target week's sales a year before (year_before), defaults to the row's lag 52 (one
    week ahead)."""
    mean = series_means(train, rows)
    recent = _first_known(rows, ["sales_lag_1", "sales_lag_2", "sales_lag_4", "sales_lag_8"])
    last = np.where(np.isnan(recent), mean, recent)
    if seasonal is None:
        seasonal = rows["sales_lag_52"].to_numpy(dtype=float, na_value=np.nan)
    average = rows["sales_rolling_mean_4"].to_numpy(dtype=float, na_value=np.nan)
    forecasts = {
        "last_value": last,
        "seasonal_naive": np.where(np.isnan(seasonal), last, seasonal),
        "moving_average_4": np.where(np.isnan(average), last, average),
        "series_mean": mean,
    }
    lag_1 = rows["sales_lag_1"].to_numpy(dtype=float, na_value=np.nan)
    unseen = ~rows["store_dept"].isin(train["store_dept"]).to_numpy()
    # Each count is a number of counted rows: between 0 and their number, so the report's counts add up.
    counted = np.ones(len(rows), dtype=bool) if counted is None else counted
    fallbacks = {name: int((fell & counted).sum()) for name, fell in (
        ("last_value", np.isnan(lag_1)), ("seasonal_naive", np.isnan(seasonal)),
        ("moving_average_4", np.isnan(average)), ("series_mean", unseen))}
    return forecasts, fallbacks


def _peer_matrix(preprocessor: Preprocessor, frame: pd.DataFrame):
    batch = preprocessor.transform(frame)
    return np.hstack([batch.numeric, batch.categories.astype(np.float32)]), batch


# scikit-learn's trees take at most this many categories per categorical feature (max_bins).
PEER_MAX_CATEGORIES = 255


def peer_categorical(preprocessor: Preprocessor, n_numeric: int) -> list[int]:
    """Columns of the peer's matrix fitted as categories: every category with at most PEER_MAX_CATEGORIES codes.

    A chain of more stores than that gives its store codes to the trees as numbers (ordered by store id): splits on
    ranges of stores, which is what a data scientist does with an id too many-valued to one-hot or to bin."""
    return [n_numeric + i for i, size in enumerate(preprocessor.cardinalities) if size <= PEER_MAX_CATEGORIES]


def _peer_key(preprocessor: Preprocessor, data: str, split: dict, seed: int, refit: bool = False) -> str:
    # The installed version from its metadata: importing scikit-learn costs seconds, and a cached peer needs none of it.
    sklearn_version = importlib.metadata.version("scikit-learn")

    blob = json.dumps({"data": data, "split": split, "preprocess": preprocessor.params, "grid": PEER_GRID,
                       "max_iter": PEER_MAX_ITER, "patience": PEER_PATIENCE, "seed": seed, "max_rows": PEER_MAX_ROWS,
                       "sklearn": sklearn_version, **({"refit": True} if refit else {})}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _stamps(column: pd.Series, rows=slice(None)):
    """A timestamp column's values (at ``rows``) as the cache's parquet reads them back: with a time zone they stay a
    DatetimeArray (``to_numpy`` makes one Timestamp object per row: 0.6 s of a cached `infer` for 205,000 origins),
    in nanoseconds."""
    values = column.array[rows]
    return values.as_unit("ns") if hasattr(values, "as_unit") else values


def _row_ids(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"store_dept": rows["store_dept"].to_numpy(dtype=np.int64),
                         TIMESTAMP: _stamps(rows[TIMESTAMP])})


def cached_peer(preprocessor: Preprocessor, rows: pd.DataFrame, *, cache: Path | None, data: str, split: dict,
                seed: int = 0, refit: bool = False) -> dict | None:
    """The tree peer's stored forecasts for exactly ``rows`` (same key, same rows in the same order), else None.

    Asked before the training rows are read: with a cached peer, `infer` needs the features of the forecast weeks
    only, a fifth of the data."""
    if cache is None:
        return None
    key = _peer_key(preprocessor, data, split, seed, refit)
    if not ((cache / f"{key}.json").exists() and (cache / f"{key}.parquet").exists()):
        return None
    stored = pd.read_parquet(cache / f"{key}.parquet")
    ids = _row_ids(rows)
    if len(stored) != len(ids) or not stored[["store_dept", TIMESTAMP]].reset_index(drop=True).equals(ids):
        return None
    info = read_json(cache / f"{key}.json")
    log.info("tree peer: cached forecasts %s (fitted in %.0f s)", key, info["fit_seconds"])
    return {**info, "forecast": stored["forecast"].to_numpy(), "cached": True}


def tree_peer(preprocessor: Preprocessor, train: pd.DataFrame, val: pd.DataFrame, rows: pd.DataFrame, *,
              cache: Path | None, data: str, split: dict, seed: int = 0, refit: bool = False) -> dict:
    """The tuned tree peer's forecasts (dollars) for ``rows``, fitted on ``train``/``val`` or read from ``cache``;
    with ``refit`` (the network's --refit), the chosen setting is fitted again on ``train`` and ``val`` together for
    the iterations early stopping chose.

    The cache key covers the data fingerprint, the split, the fitted preprocessing, the search and scikit-learn's
    version: new data, new weeks or new features mean a new fit, never a stale forecast.
    """
    cached = cached_peer(preprocessor, rows, cache=cache, data=data, split=split, seed=seed, refit=refit)
    if cached is not None:
        return cached
    key = _peer_key(preprocessor, data, split, seed, refit)
    from threadpoolctl import threadpool_limits

    from salesfc import cpus

    # scikit-learn's OpenMP pool would take one thread per host core; in a pod limited to fewer CPUs those threads
    # are throttled and wait for each other. Take the container's budget, as training does.
    with threadpool_limits(cpus.threads_per_process(), user_api="openmp"):
        result = _fit_tree_peer(preprocessor, train, val, rows, seed, refit)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache / f"{key}.parquet") as tmp:
            _row_ids(rows).assign(forecast=result["forecast"]).to_parquet(tmp, index=False)
        write_json(cache / f"{key}.json", {k: v for k, v in result.items() if k != "forecast"})
    return {**result, "cached": False}


def _fit_tree_peer(preprocessor: Preprocessor, train: pd.DataFrame, val: pd.DataFrame, rows: pd.DataFrame,
                   seed: int, refit: bool = False) -> dict:
    started = time.perf_counter()
    x_train, b_train = _peer_matrix(preprocessor, train)
    x_val, b_val = _peer_matrix(preprocessor, val)
    categorical = peer_categorical(preprocessor, b_train.numeric.shape[1])
    result = _search(Examples(x_train, b_train.target, b_train.weight, b_train.scale, train["is_holiday"].to_numpy()),
                     Examples(x_val, b_val.target, b_val.weight, b_val.scale, val["is_holiday"].to_numpy()),
                     categorical, seed, refit)
    x_rows, b_rows = _peer_matrix(preprocessor, rows)
    forecast = result.pop("model").predict(x_rows) * b_rows.scale
    return {"forecast": forecast, **result, "fit_seconds": round(time.perf_counter() - started, 1)}


@dataclass
class Examples:
    """A peer's matrix and its scaled target, sample weight, scale and holiday flag per row."""

    x: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    scale: np.ndarray
    holiday: np.ndarray


def _search(train: Examples, val: Examples, categorical: list[int], seed: int, refit: bool = False) -> dict:
    """PEER_GRID fitted on ``train``, each early-stopped on ``val``; the one with the lowest validation WMAE (with
    ``refit``, fitted again on both for as many iterations)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from salesfc import metrics

    best = None
    trials = []
    # A fit takes minutes on full data; each one logs its result, so in a log no lines are needed between them.
    with progress.stage(f"tree peer: searching {len(PEER_GRID)} settings on {len(train.target):,} rows",
                        len(PEER_GRID), "fit", log_every=math.inf) as bar:
        for params in PEER_GRID:
            tick = time.perf_counter()
            model = HistGradientBoostingRegressor(
                loss="absolute_error", max_iter=PEER_MAX_ITER, categorical_features=categorical, early_stopping=True,
                n_iter_no_change=PEER_PATIENCE, random_state=seed, **params)
            model.fit(train.x, train.target, sample_weight=train.weight, X_val=val.x, y_val=val.target,
                      sample_weight_val=val.weight)
            wmae = metrics.evaluate(val.target * val.scale, model.predict(val.x) * val.scale, val.holiday)["wmae"]
            trials.append({**params, "iterations": int(model.n_iter_), "val_wmae": round(wmae, 2),
                           "seconds": round(time.perf_counter() - tick, 1)})
            log.info("tree peer: %s -> %d iterations, validation WMAE $%.0f (%.0f s)", params, model.n_iter_, wmae,
                     trials[-1]["seconds"])
            bar.update()
            if best is None or wmae < best[0]:
                best = (wmae, model, params)
    wmae, model, params = best
    iterations = int(model.n_iter_)
    if refit:
        tick = time.perf_counter()
        model = HistGradientBoostingRegressor(
            loss="absolute_error", max_iter=iterations, categorical_features=categorical, early_stopping=False,
            random_state=seed, **params)
        model.fit(np.vstack([train.x, val.x]), np.concatenate([train.target, val.target]),
                  sample_weight=np.concatenate([train.weight, val.weight]))
        log.info("tree peer: %s refitted on the training and validation weeks, %d iterations (%.0f s)", params,
                 iterations, time.perf_counter() - tick)
    return {"model": model, "chosen": params, "iterations": iterations, "val_wmae": wmae, "trials": trials,
            **({"refit": True} if refit else {})}


# -- the peer beyond one week ------------------------------------------------------------------------------------
def _ahead_matrix(preprocessor: Preprocessor, origins: pd.DataFrame, step: np.ndarray) -> np.ndarray:
    """The one-week peer's matrix of each origin, plus the horizon and its target week's calendar (known ahead, as
    the network has it): weeks ahead, week of year, weeks to Thanksgiving and to Christmas."""
    from salesfc.features import calendar

    x, _ = _peer_matrix(preprocessor, origins)
    days = epoch_days(origins[TIMESTAMP]) + 7 * step
    known = calendar(pd.Series(EPOCH_DAY.tz_localize(None) + pd.to_timedelta(days, unit="D")))
    extra = np.column_stack([step + 1, known["week_of_year"], known["weeks_to_thanksgiving"],
                             known["weeks_to_christmas"]]).astype(np.float32)
    return np.hstack([x, extra])


def _ahead_examples(preprocessor: Preprocessor, frame: pd.DataFrame, ahead, keep: np.ndarray,
                    rng: np.random.Generator) -> Examples:
    """One example per origin with a target in ``keep``: a horizon drawn among its kept ones (so as many examples as
    the one-week peer has, every horizon about equally often)."""
    rows = np.flatnonzero(keep.any(axis=1))
    step = np.argmax(rng.random(keep[rows].shape) * keep[rows], axis=1)
    origins = frame.iloc[rows]
    x = _ahead_matrix(preprocessor, origins, step)
    scale = preprocessor.scale(origins, epoch_days(origins[TIMESTAMP]), step)
    holiday = ahead.holiday[rows, step]
    weight = preprocessor.weight_of(holiday, scale) / preprocessor.params["weight_mean"]
    return Examples(x, (ahead.sales[rows, step] / scale).astype(np.float32), weight.astype(np.float32), scale,
                    holiday)


def _ahead_key(preprocessor: Preprocessor, origins: pd.DataFrame, at: np.ndarray, step: np.ndarray, data: str, split,
               seed: int, refit: bool = False) -> tuple[str, pd.DataFrame]:
    key = f"{_peer_key(preprocessor, data, split.to_json(), seed, refit)}-ahead{int(step.max(initial=0)) + 1}"
    return key, pd.DataFrame({"store_dept": origins["store_dept"].to_numpy(dtype=np.int64)[at],
                              TIMESTAMP: _stamps(origins[TIMESTAMP], at), "step": step})


def cached_peer_ahead(preprocessor: Preprocessor, origins: pd.DataFrame, at: np.ndarray, step: np.ndarray, *,
                      cache: Path | None, data: str, split, seed: int = 0, refit: bool = False) -> dict | None:
    """tree_peer_ahead's stored forecasts for exactly these (origin, step) pairs, else None."""
    if cache is None:
        return None
    key, ids = _ahead_key(preprocessor, origins, at, step, data, split, seed, refit)
    if not ((cache / f"{key}.json").exists() and (cache / f"{key}.parquet").exists()):
        return None
    stored = pd.read_parquet(cache / f"{key}.parquet")
    if len(stored) != len(ids) or not stored[list(ids.columns)].reset_index(drop=True).equals(ids):
        return None
    return {**read_json(cache / f"{key}.json"), "forecast": stored["forecast"].to_numpy(), "cached": True}


def tree_peer_ahead(preprocessor: Preprocessor, known: pd.DataFrame, split, origins: pd.DataFrame, at: np.ndarray,
                    step: np.ndarray, *, cache: Path | None, data: str, seed: int = 0, refit: bool = False) -> dict:
    """The tree peer 2 or more weeks ahead: one HistGradientBoostingRegressor for every later horizon, with the
    horizon and the target week's calendar as features beside the origin's (the one-week peer's) inputs, searched
    and early-stopped like it. Its examples are drawn from ``known`` (the weeks before the held-out ones): an origin's
    target in the training weeks to fit, in the validation weeks to stop and choose. Returns its forecasts (dollars)
    for ``origins`` row ``at`` ``step`` + 1 weeks ahead (each target week is the origin's own + 7 x step days), cached
    like the one-week peer's."""
    from salesfc.dataset import Ahead

    cached = cached_peer_ahead(preprocessor, origins, at, step, cache=cache, data=data, split=split, seed=seed,
                               refit=refit)
    if cached is not None:
        return cached
    horizon = int(step.max(initial=0)) + 1
    key, ids = _ahead_key(preprocessor, origins, at, step, data, split, seed, refit)
    from threadpoolctl import threadpool_limits

    from salesfc import cpus

    started = time.perf_counter()
    ahead = Ahead.of(known, horizon)
    part = split.part_of_days(ahead.target_days)
    later = np.arange(horizon) > 0  # horizon 1 is the one-week peer's
    rng = np.random.default_rng(seed)
    train = _ahead_examples(preprocessor, known, ahead, ahead.found & (part == 0) & later, rng)
    val = _ahead_examples(preprocessor, known, ahead, ahead.found & (part == 1) & later, rng)
    n_inputs = preprocessor.n_numeric
    categorical = peer_categorical(preprocessor, n_inputs) + [n_inputs + len(preprocessor.cardinalities) + 1]
    with threadpool_limits(cpus.threads_per_process(), user_api="openmp"):
        result = _search(train, val, categorical, seed, refit)
        chosen = origins.iloc[at]
        x = _ahead_matrix(preprocessor, chosen, step)
        forecast = result.pop("model").predict(x) * preprocessor.scale(chosen, epoch_days(chosen[TIMESTAMP]), step)
    result = {**result, "fit_seconds": round(time.perf_counter() - started, 1)}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache / f"{key}.parquet") as tmp:
            ids.assign(forecast=forecast).to_parquet(tmp, index=False)
        write_json(cache / f"{key}.json", result)
    return {**result, "forecast": forecast, "cached": False}
