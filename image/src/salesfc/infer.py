"""infer: next week's forecast for every store department, and an honest evaluation of the model.

1. Waits (up to --wait-timeout) for the run's model: ``models/<run-id>/training.json`` marks a finished run.
2. Evaluates on the held-out test weeks, which neither training nor early stopping saw: the model against the
   naive baselines and the gradient-boosted-trees peer (salesfc.baselines), and against the noise floor when
   the data is synthetic (the error of predicting the generator's noiseless signal). With H weeks, each held-out
   week is also forecast 2 ... H weeks ahead and scored per horizon (``by_horizon``). With ``--quantiles``, each
   forecast's band, next week's too, is widened by the errors of the latest weeks known when it was made
   (salesfc.band); `serve` answers next week's band as infer last widened it. With ``--level-correction on`` the
   model's and the tree peer's forecasts are multiplied by the ratio of actual to forecast sales of their latest
   held-out weeks known when each was made (salesfc.correction), next week's (and serve's) by the last ones'.
3. Forecasts the week after the data (and, trained with ``--horizon H``, the H - 1 weeks after it) from the online
   store (``get_online_features``): the same features, the same preprocessing and the same network as training.
4. Writes ``reports/<run-id>/``: predictions.parquet (next week, every horizon: column ``horizon``),
   holdout_predictions.parquet, metrics.json and report.md with its plots.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch

from salesfc import band, baselines, correction, feature_store, metrics, progress
from salesfc import model as model_lib
from salesfc.dataset import Ahead, Preprocessor, Split
from salesfc.data import HOLIDAY_NAMES
from salesfc.errors import UserError
from salesfc.tables import EPOCH_DAY, TIMESTAMP, Columns, epoch_days, split_store_dept, utc_weeks
from salesfc.waiting import wait_for
from salesfc.workspace import Workspace, atomic_path, read_json, shown, wait_for_manifest, write_json

log = logging.getLogger(__name__)


def resolve_run(config) -> str:
    """The run to use: --run-id, else the latest finished one (waiting for one to exist)."""
    workspace: Workspace = config.workspace
    if config.run_id:
        run_id = config.run_id
    else:
        def no_model() -> str | None:
            if workspace.latest_run():
                return None
            # Name the first missing stage: in an empty work directory training cannot run either.
            todo = "`salesfc train`" if workspace.manifest.exists() else "`salesfc prep`, then `salesfc train`"
            return f"{workspace.models / 'LATEST'} does not exist yet (run {todo})"

        wait_for("a trained model", no_model, config.wait_timeout)
        run_id = workspace.latest_run()
    done = workspace.run_dir(run_id) / "training.json"
    wait_for(f"model {run_id}", lambda: None if done.exists() else f"{done} does not exist yet (training has not "
             "finished)", config.wait_timeout)
    return run_id


PREDICT_ROWS = 65_536


class Forecaster:
    """A trained run: network + preprocessing, predicting dollars from feature rows."""

    def __init__(self, run_dir):
        self.network, self.checkpoint = model_lib.load(run_dir / "model.pt")
        self.params = read_json(run_dir / "preprocess.json")
        self.preprocessor = Preprocessor(self.params)
        self.split = Split.from_json(self.params["split"])
        # Trained again on the validation weeks (--refit on): the tree peer is too, to stay the network's peer.
        self.refit = bool(self.params.get("refit", False))

    @property
    def quantiles(self) -> tuple[float, ...]:
        return self.network.quantiles

    @property
    def horizon(self) -> int:
        return self.network.horizon

    @property
    def has_band(self) -> bool:
        """Whether the network forecasts quantiles beside the median."""
        return len(self.quantiles) > 1

    def predict_quantiles(self, frame: pd.DataFrame, week=None, widen: np.ndarray | None = None,
                          level: float = 1.0) -> dict[float, np.ndarray]:
        """Dollars per quantile the network forecasts ({0.5: ...} alone unless trained with --quantiles), each
        (rows, horizon): column h - 1 is the week h - 1 weeks after the row's own, forecast from the sales before
        the row's week. The row's week is its event_timestamp, or ``week`` (one for every row: online rows).
        ``widen`` (rows, horizon), or (horizon,) for every row: how far the band is widened, in units of the row's
        scale, instead of by the validation weeks' widening the model was saved with (salesfc.band). ``level``: the
        factor every quantile is multiplied by (salesfc.correction)."""
        ratio, scales = self.scaled_quantiles(frame, week)
        if widen is not None:
            ratio = self.widened(ratio, widen)
        return self.dollars(frame, ratio * level, scales)

    @torch.no_grad()
    def scaled_quantiles(self, frame: pd.DataFrame, week=None) -> tuple[np.ndarray, np.ndarray]:
        """The network's quantiles in units of the scale, (rows, horizon, quantiles), and the scales (rows, horizon)."""
        batch = self.preprocessor.transform(frame)
        numeric, categories = torch.from_numpy(batch.numeric), torch.from_numpy(batch.categories)
        days = own_days = None
        if self.horizon > 1:
            own_days = epoch_days(frame[TIMESTAMP] if week is None else [week] * len(frame))
            days = torch.from_numpy(own_days)
        # In slices: the hidden activations of every member for 780K held-out rows (10x the stores) at once took
        # 1.1 GiB above the rest of infer.
        ratio = np.concatenate([self.network(numeric[i:i + PREDICT_ROWS], categories[i:i + PREDICT_ROWS],
                                             None if days is None else days[i:i + PREDICT_ROWS],
                                             quantiles=True).numpy()
                                for i in range(0, len(numeric), PREDICT_ROWS)] or
                               [np.zeros((0, self.horizon, len(self.quantiles)), dtype=np.float32)]
                               ).astype(np.float64)
        return ratio, self.preprocessor.horizon_scales(frame, own_days, self.horizon)

    def widened(self, ratio: np.ndarray, widen: np.ndarray) -> np.ndarray:
        """``ratio`` (scaled_quantiles) with the band widened by ``widen`` ((rows, horizon), or (horizon,) for every
        row) instead of the model's own."""
        change = np.asarray(widen, dtype=np.float64) - np.asarray(self.network.band_widen, dtype=np.float64)
        sign = np.sign(np.asarray(self.quantiles) - 0.5)  # -1 below the median, +1 above, 0 for it
        return ratio + change[..., None] * sign

    def dollars(self, frame: pd.DataFrame, ratio: np.ndarray, scales: np.ndarray) -> dict[float, np.ndarray]:
        # The floor is monotonic, so floored quantiles stay in order.
        return {q: self.preprocessor.floor(frame, ratio[..., i] * scales) for i, q in enumerate(self.quantiles)}

    def predict(self, frame: pd.DataFrame, week=None) -> np.ndarray:
        """The point forecast: the median, (rows, horizon)."""
        return self.predict_quantiles(frame, week)[0.5]


def recent_calibration(workspace: Workspace, run_id: str, week: str) -> tuple[list[float] | None, float]:
    """What infer last gave ``run_id``'s forecast of ``week``: the band's widening per horizon (salesfc.band; None
    without a band: the model's own widening) and the level's factor (salesfc.correction). Before infer has run on
    this data: None and 1."""
    try:
        result = read_json(workspace.report_dir(run_id) / "metrics.json")
    except (FileNotFoundError, ValueError):
        return None, 1.0
    if result.get("next_week") != week:
        return None, 1.0
    return result.get("next_week_band"), float(result.get("level_correction", {}).get("next_week", 1.0))


def check_trained_on(run_id: str, forecaster: Forecaster, manifest: dict) -> None:
    trained_on = forecaster.params.get("data")
    if trained_on != manifest["fingerprint"]:
        raise UserError(f"model {run_id} was trained on other data ({trained_on}) than the store now holds "
                        f"({manifest['fingerprint']}); train again after prep")


# One feature of each feature view (sales history, store context): both online rows must be of the forecast week.
FRESHNESS_FEATURES = ("sales_lag_1", "temperature")


def online_rows(store: feature_store.Store, keys: np.ndarray) -> tuple[Columns, np.ndarray]:
    """The online features of ``keys`` and, per row, the week they describe (epoch seconds; the older of the two
    views', 0 where the store has no row). A row whose week is not the forecast week is stale: the online store
    was not materialized after the last prep, and the model must not see it. The features come as Columns, not a
    DataFrame: building one cost a served forecast 0.5 ms of its 4.5."""
    columns = feature_store.online_features(store, keys, timestamps=True)
    feature_week = np.minimum.reduce([np.asarray(columns[f"{feature}__ts"], dtype=float) for feature in
                                      FRESHNESS_FEATURES])
    feature_week = np.nan_to_num(feature_week, nan=0.0).astype(np.int64)
    features = {name: np.asarray(values) for name, values in columns.items() if not name.endswith("__ts")}
    return Columns({**features, "dept": split_store_dept(keys)[1]}), feature_week


def stale_message(week: str, count: int) -> str:
    return (f"the online store does not hold the week of {week} for {count} series: run `salesfc prep` (it "
            "materializes the latest week)")


def next_week(store: feature_store.Store, forecaster: Forecaster, manifest: dict, widen: list[float] | None = None,
              level: float = 1.0) -> pd.DataFrame:
    """The forecast from the online store: every series, the week after the data and the horizon - 1 weeks after it,
    one row per series and week (``horizon`` 1 is next week), horizon by horizon. ``widen``: the band's widening
    per horizon (forecast_weeks' for a forecast after the data), else the model's own; ``level``: the level's factor
    (salesfc.correction, from the latest held-out weeks)."""
    keys = np.asarray(manifest["forecast_series"], dtype=np.int64)
    week = pd.Timestamp(manifest["next_week"], tz="UTC")
    online, feature_week = online_rows(store, keys)
    stale = feature_week != int(week.timestamp())
    if stale.any():
        raise UserError(stale_message(manifest["next_week"], int(stale.sum())))
    bands = forecaster.predict_quantiles(online, week, widen, level)
    store_ids, depts = split_store_dept(keys)
    horizon = forecaster.horizon
    steps = np.repeat(np.arange(horizon), len(keys))
    return pd.DataFrame({"store": np.tile(store_ids, horizon), "dept": np.tile(depts, horizon),
                         "week": utc_weeks(week + pd.to_timedelta(7 * steps, unit="D")), "horizon": steps + 1,
                         "predicted_sales": bands[0.5].T.ravel().round(2),
                         **{f"predicted_sales_{metrics.quantile_name(q)}": values.T.ravel().round(2)
                            for q, values in bands.items() if q != 0.5}})


# The origin's columns the naive baselines read (salesfc.baselines.naive_forecasts).
NAIVE_INPUTS = ("sales_lag_1", "sales_lag_2", "sales_lag_4", "sales_lag_8", "sales_rolling_mean_4")


def forecast_weeks(forecaster: Forecaster, frame: pd.DataFrame, first: pd.Timestamp, last: pd.Timestamp
                   ) -> tuple[pd.DataFrame, dict, np.ndarray, list[float] | None]:
    """Every forecast the rows of ``frame`` (origins) make of a reported week from ``first`` to ``last``: one row per
    (origin, horizon) whose target week is in that range and in ``frame``, with the target's series, week
    (event_timestamp), horizon, weekly_sales, is_holiday and expected_sales and the origin's NAIVE_INPUTS. Returns
    those rows, the model's quantiles for them ({q: dollars}), per row the index of its origin in ``frame``, and
    with a band the widening of a forecast made after ``last``, per horizon (None without). A target h - 1 weeks
    after an origin's own week is forecast from the sales before the origin's week only.

    With a band, each forecast's is widened by the errors of the latest weeks known when it was made, the model
    deployed at ``first`` (salesfc.band): ``frame`` should hold origins from band.RECENT_WEEKS + horizon - 1 weeks
    before ``first`` (recent_origins), whose forecasts of weeks before ``first`` are scored, not returned."""
    ahead = Ahead.of(frame, forecaster.horizon)
    first_day, last_day = epoch_days([first, last])
    target_days = ahead.target_days
    keep = ahead.found & (target_days >= first_day) & (target_days <= last_day)
    scored = keep
    if forecaster.has_band:
        # Weeks the model was trained on do not count: their errors are smaller than those of the weeks ahead.
        since = max(first_day - band.RECENT_WEEKS * band.DAYS_PER_WEEK, epoch_days([forecaster.split.val_start])[0])
        scored = ahead.found & (target_days >= since) & (target_days <= last_day)
    origins = np.flatnonzero(scored.any(axis=1))
    chosen = frame.iloc[origins]
    ratio, scales = forecaster.scaled_quantiles(chosen)
    after = None
    if forecaster.has_band:
        widen, after = recent_band(forecaster, ratio, scales, ahead.rows(origins), scored[origins], first_day,
                                   last_day)
        ratio = forecaster.widened(ratio, widen)
    bands = forecaster.dollars(chosen, ratio, scales)
    row, step = np.nonzero(keep[origins])
    at = origins[row]
    rows = pd.DataFrame({
        "store": frame["store"].to_numpy()[at], "dept": frame["dept"].to_numpy()[at],
        "store_dept": frame["store_dept"].to_numpy()[at],
        TIMESTAMP: EPOCH_DAY + pd.to_timedelta(target_days[at, step], unit="D"), "horizon": step + 1,
        "weekly_sales": ahead.sales[at, step], "is_holiday": ahead.holiday[at, step].astype(np.int64),
        "expected_sales": ahead.expected[at, step],
        **{name: frame[name].to_numpy(dtype=float, na_value=np.nan)[at] for name in NAIVE_INPUTS},
    }, copy=False)  # every column is a new array already: copying them into one block took 0.5 s for 917,000 rows
    return rows, {q: values[row, step] for q, values in bands.items()}, at, after


def recent_origins(forecaster: Forecaster, first: pd.Timestamp) -> pd.Timestamp:
    """The first origin forecast_weeks needs to forecast from ``first`` on (and, with a band, to widen it)."""
    return first - pd.Timedelta(weeks=forecaster.horizon - 1 + (band.RECENT_WEEKS if forecaster.has_band else 0))


def recent_band(forecaster: Forecaster, ratio: np.ndarray, scales: np.ndarray, ahead: Ahead, scored: np.ndarray,
                first_day: int, last_day: int) -> tuple[np.ndarray, list[float]]:
    """The widening (rows, horizon) of forecast_weeks' forecasts (``ratio``: scaled_quantiles of its origins) from
    the scores of those with a known actual (``scored``), horizon by horizon (salesfc.band), and that of a forecast
    made after ``last_day``."""
    nominal = forecaster.quantiles[-1] - forecaster.quantiles[0]
    static = forecaster.network.band_widen
    with np.errstate(invalid="ignore"):
        actual = ahead.sales / scales
    raw = forecaster.widened(ratio, np.zeros_like(scales))
    scores = band.outside(raw[..., 0], raw[..., -1], actual)
    # A forecast is made at the start of its origin's week, or when the model was deployed, if that is later.
    known_until = np.maximum(ahead.days, first_day) - band.DAYS_PER_WEEK
    # One more forecast, made after last_day: the latest held-out weeks set its band.
    known_until = np.append(known_until, last_day)
    widen = np.empty((len(known_until), forecaster.horizon))
    for h in range(forecaster.horizon):
        counted = scored[:, h]
        score_days = ahead.days[counted] + h * band.DAYS_PER_WEEK
        widen[:, h] = band.recent_widening(score_days, scores[counted, h], known_until, nominal, static[h])
    return widen[:-1], [float(w) for w in widen[-1]]


def evaluate(store: feature_store.Store, forecaster: Forecaster, has_signal: bool, workspace: Workspace,
             rows_per_read: int, correct: bool = False) -> tuple[dict, pd.DataFrame]:
    split = forecaster.split
    # The held-out weeks, the origins that forecast them (up to horizon - 1 weeks before them, with a band the
    # latest weeks before them too) and, the first time, the peer's training weeks: in reads of about rows_per_read
    # rows.
    counts = feature_store.label_counts(store)
    since = recent_origins(forecaster, split.test_start)
    reads = feature_store.reads_per_shard(feature_store.rows_in_weeks(counts, since=since), 1, rows_per_read)
    # In the order of one read (the report's tables and plots follow the rows).
    origins = feature_store.in_table_order(feature_store.shard_features(store, 0, 1, reads, since=since))
    test = origins[origins[TIMESTAMP] >= split.test_start]
    if test.empty:
        raise UserError("no test weeks in the data this model was trained on; was prep re-run with less data?")
    rows, bands, at, after = forecast_weeks(forecaster, origins, split.test_start, split.last_week)
    peer_args = {"cache": workspace.baselines, "data": forecaster.params["data"], "split": forecaster.params["split"],
                 "refit": forecaster.refit}
    # The naive baselines need the training weeks' sales only (the labels), and a cached peer nothing more: the
    # features of the training weeks are read only for the one run that fits the peer.
    later_at, later_step = later_weeks(rows, at)
    ahead_args = {"cache": workspace.baselines, "data": forecaster.params["data"], "refit": forecaster.refit}
    peer = baselines.cached_peer(forecaster.preprocessor, test, **peer_args)
    ahead = (baselines.cached_peer_ahead(forecaster.preprocessor, origins, later_at, later_step, split=split,
                                         **ahead_args) if len(later_at) else None)
    if peer is None or (len(later_at) and ahead is None):
        parts = baselines.peer_parts(int(counts.sum()))
        if parts > 1:
            log.info("tree peer: fitted on 1/%d of the series (about %s label rows; baselines.PEER_MAX_ROWS)", parts,
                     f"{baselines.PEER_MAX_ROWS:,}")
        reads = feature_store.reads_per_shard(feature_store.rows_in_weeks(counts, until=split.test_start), parts,
                                              rows_per_read)
        known = feature_store.shard_features(store, 0, parts, reads, until=split.test_start)
        if peer is None:
            part = split.part(known[TIMESTAMP])
            peer = baselines.tree_peer(forecaster.preprocessor, known[part == 0], known[part == 1], test, **peer_args)
        if len(later_at) and ahead is None:
            ahead = baselines.tree_peer_ahead(forecaster.preprocessor, known, split, origins, later_at, later_step,
                                              **ahead_args)
        del known
    labels = feature_store.read_labels(store)
    train = labels[split.part(labels[TIMESTAMP]) == 0]
    result, holdout = score(rows, bands, train, peer_at(peer, origins, test.index, at, rows, ahead), has_signal,
                            baselines.year_before(labels, rows), split.test_start, correct)
    result["test_weeks"] = {"from": f"{forecaster.split.test_start:%Y-%m-%d}",
                            "to": f"{forecaster.split.last_week:%Y-%m-%d}", "rows": int(len(test)),
                            "horizon": forecaster.horizon,
                            "holidays": holiday_weeks(test[TIMESTAMP])}
    if after is not None:
        result["model"]["quantiles"]["widened_by_recent_weeks"] = band.RECENT_WEEKS
        result["next_week_band"] = after
    return result, holdout


def later_weeks(rows: pd.DataFrame, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of forecast_weeks' rows (origins ``at``), those 2 or more weeks ahead, as the tree peer beyond one week takes
    them: each one's origin and its step (weeks ahead - 1)."""
    horizon = rows["horizon"].to_numpy()
    return at[horizon > 1], horizon[horizon > 1] - 1


def peer_at(peer: dict, frame: pd.DataFrame, forecast_rows: pd.Index, at: np.ndarray, rows: pd.DataFrame,
            ahead: dict | None = None) -> dict:
    """The tree peer's forecast of each of ``rows`` (forecast_weeks' rows, origins ``at`` in ``frame``): at horizon 1
    the one-week peer's (``peer``, which forecast the week of each of ``frame``'s ``forecast_rows``), at later ones
    ``ahead``'s (baselines.tree_peer_ahead, in the order of those rows)."""
    by_origin = np.full(len(frame), np.nan)
    by_origin[frame.index.get_indexer(forecast_rows)] = peer["forecast"]
    first = rows["horizon"].to_numpy() == 1
    forecast = np.where(first, by_origin[at], np.nan)
    if ahead is not None:
        forecast[~first] = ahead["forecast"]
    return {**peer, "forecast": forecast}


def score(rows: pd.DataFrame, bands: dict, train: pd.DataFrame, peer: dict, has_signal: bool,
          seasonal: np.ndarray, deployed: pd.Timestamp, correct: bool = False) -> tuple[dict, pd.DataFrame]:
    """Every forecaster on ``rows`` (forecast_weeks' rows: a target week and the horizon it is forecast at): the model
    (its quantile forecasts ``bands``, the median its point forecast), the naive baselines (``seasonal``: each target
    week's sales a year before) and the tree peer (NaN where it does not forecast). With ``correct`` the model and
    the tree peer are level-corrected by their own errors of the weeks known since ``deployed`` (salesfc.correction),
    the naive baselines are not. The headline metrics are those of next week's forecasts (horizon 1: what the
    deployed model is scored on), ``by_horizon`` each horizon's WMAE. Returns the metrics (with ``correct``,
    ``level_correction``: the model's factor for a forecast after the rows' weeks) and one frame of (series, week,
    horizon, actual, forecast_<name>..., model_p<q>...) rows."""
    actual = rows["weekly_sales"].to_numpy(dtype=float)
    holiday = rows["is_holiday"].to_numpy()
    horizon = rows["horizon"].to_numpy()
    first = horizon == 1
    peer_forecast = peer["forecast"]
    if correct:
        days, first_day = epoch_days(rows[TIMESTAMP]), epoch_days([deployed])[0]
        level, after = correction.factors(days, horizon, actual, bands[0.5], first_day)
        bands = {q: values * level for q, values in bands.items()}
        peer_forecast = peer_forecast * correction.factors(days, horizon, actual, peer_forecast, first_day)[0]
    naive, fallbacks = baselines.naive_forecasts(train, rows, seasonal, counted=first)
    forecasts = {"model": bands[0.5], **naive, baselines.PEER: peer_forecast}
    scores = {name: metrics.evaluate(actual[first], forecast[first], holiday[first])
              for name, forecast in forecasts.items()}
    for name, count in fallbacks.items():
        scores[name]["fallback_rows"] = count
    scores[baselines.PEER].update(chosen=peer["chosen"], iterations=peer["iterations"],
                                  fit_seconds=peer["fit_seconds"], cached=peer["cached"])
    noise_floor = None
    expected = rows["expected_sales"].to_numpy(dtype=float)
    if has_signal and not np.isnan(expected).any():
        noise_floor = metrics.evaluate(actual[first], expected[first], holiday[first])
    result = {"model": scores.pop("model"), "baselines": scores, "noise_floor": noise_floor}
    if correct:
        result["level_correction"] = {"recent_weeks": correction.RECENT_WEEKS, "next_week": after}
    if len(bands) > 1:
        result["model"]["quantiles"] = metrics.intervals(actual[first], {q: b[first] for q, b in bands.items()},
                                                         holiday[first])
    if horizon.max(initial=1) > 1:
        result["by_horizon"] = by_horizon(actual, holiday, horizon, forecasts, bands,
                                          expected if noise_floor is not None else None)
    holdout = pd.DataFrame({"store": rows["store"].to_numpy(), "dept": rows["dept"].to_numpy(),
                            "week": rows[TIMESTAMP].array, "horizon": horizon, "actual": actual,
                            "is_holiday": holiday,
                            **{f"forecast_{name}": np.round(values, 2) for name, values in forecasts.items()},
                            **{f"model_{metrics.quantile_name(q)}": np.round(values, 2)
                               for q, values in bands.items() if q != 0.5}}, copy=False)
    if noise_floor is not None:
        holdout["expected_sales"] = expected
    return result, holdout


def by_horizon(actual: np.ndarray, holiday: np.ndarray, horizon: np.ndarray, forecasts: dict, bands: dict,
               expected: np.ndarray | None) -> list[dict]:
    """Per horizon: the rows, each forecaster's WMAE (one that does not forecast that far is left out), the noise
    floor's, and with quantiles the band's coverage (all, holiday weeks) and pinball losses."""
    table = []
    for h in range(1, int(horizon.max()) + 1):
        at = horizon == h
        entry = {"horizon": h, "rows": int(at.sum()),
                 "wmae": {name: metrics.evaluate(actual[at], forecast[at], holiday[at])["wmae"]
                          for name, forecast in forecasts.items() if at.any() and not np.isnan(forecast[at]).any()}}
        if expected is not None and at.any():
            entry["wmae"]["noise_floor"] = metrics.evaluate(actual[at], expected[at], holiday[at])["wmae"]
        if len(bands) > 1 and at.any():
            entry["quantiles"] = metrics.intervals(actual[at], {q: b[at] for q, b in bands.items()}, holiday[at])
        table.append(entry)
    return table


def holiday_weeks(weeks: pd.Series) -> list[str]:
    """The flagged holiday weeks among ``weeks``, named: what an evaluation window does and does not contain."""
    found = []
    for week in sorted(pd.Series(weeks.unique())):
        day = pd.Timestamp(week).tz_localize(None).normalize()
        name = HOLIDAY_NAMES.get(day)
        if name:
            found.append(f"{name} {day:%Y-%m-%d}")
    return found


FLOOR_LABEL = "noise floor (MAE/WMAE only)"
HORIZON_COLUMNS = ("model", baselines.PEER, "seasonal_naive", "last_value", "moving_average_4", "series_mean",
                   "noise_floor")
HORIZON_LABELS = {baselines.PEER: "tree peer", "noise_floor": "noise floor"}


def horizon_table(table: list[dict]) -> list[str]:
    """WMAE at each horizon, the model against the baselines at the same horizon; with quantiles, the share of
    actuals inside the band, in all weeks and in holiday weeks."""
    names = [n for n in HORIZON_COLUMNS if n in table[0]["wmae"]]
    band = "quantiles" in table[0]
    lines = [f"{'weeks ahead':<12}{'rows':>9}" + "".join(f"{HORIZON_LABELS.get(n, n.replace('_', ' '))[:16]:>17}"
                                                        for n in names)
             + (f"{'band holds':>12}{'holidays':>10}" if band else "")]
    for entry in table:
        line = f"{entry['horizon']:<12}{entry['rows']:>9,}" + "".join(
            f"{entry['wmae'][n]:>17,.0f}" if n in entry["wmae"] else f"{'':>17}" for n in names)
        if band and "quantiles" in entry:
            holiday = entry["quantiles"]["coverage_holiday"]
            line += f"{entry['quantiles']['coverage']:>12.1%}" + (f"{holiday:>10.1%}" if holiday is not None else "")
        lines.append(line)
    return lines


def comparison_table(result: dict) -> list[str]:
    rows = [("model", result["model"])] + list(result["baselines"].items())
    lines = [f"{'forecaster':<28} {'WMAE':>10} {'MAE':>10} {'RMSE':>10} {'MAPE':>8} {'R2':>7}"]
    for name, m in rows:
        lines.append(f"{name:<28} {m['wmae']:>10,.0f} {m['mae']:>10,.0f} {m['rmse']:>10,.0f} {m['mape']:>7.2f}% "
                     f"{m['r2']:>7.4f}")
    if result["noise_floor"]:
        # The noiseless signal is the median of the noise, so it bounds absolute errors only: a forecaster can beat
        # its RMSE, MAPE or R2. Those columns are left empty.
        floor = result["noise_floor"]
        lines.append(f"{FLOOR_LABEL:<28} {floor['wmae']:>10,.0f} {floor['mae']:>10,.0f} {'':>10} {'':>8} {'':>7}")
    return lines


def run(config) -> int:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    workspace = config.workspace
    run_id = resolve_run(config)
    run_dir = workspace.run_dir(run_id)
    store = feature_store.open_store(config)
    manifest = wait_for_manifest(workspace, config.data_id, config.wait_timeout)
    forecaster = Forecaster(run_dir)
    check_trained_on(run_id, forecaster, manifest)
    timings["load"] = time.perf_counter() - clock

    tick = time.perf_counter()
    # Minutes on full data the first time (the held-out weeks through Feast, the tree peer's search). First: with a
    # band, next week's is widened by the errors of the latest held-out weeks.
    with progress.stage("evaluating on the held-out weeks (features, baselines, tree peer)"):
        result, holdout = evaluate(store, forecaster, manifest["has_signal"], workspace, config.rows_per_read,
                                   config.level_correction == "on")
    timings["evaluation"] = time.perf_counter() - tick
    tick = time.perf_counter()
    with progress.stage(f"forecasting {manifest['next_week']} from the online store"):
        forecast = next_week(store, forecaster, manifest, result.get("next_week_band"),
                             result.get("level_correction", {}).get("next_week", 1.0))
    timings["next week (online)"] = time.perf_counter() - tick
    next_only = forecast[forecast["horizon"] == 1]
    result.update(run_id=run_id, next_week=manifest["next_week"], forecast_rows=len(next_only),
                  horizon=forecaster.horizon, data=manifest["source"])

    out = workspace.report_dir(run_id)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("predictions.parquet", forecast), ("holdout_predictions.parquet", holdout)):
        with atomic_path(out / name) as tmp:
            table.to_parquet(tmp, index=False)
    tick = time.perf_counter()
    from salesfc import report

    with progress.stage("writing the report and its plots"):
        report.write(out, result, holdout, forecast, read_json(run_dir / "training.json"), config.plot_series)
    timings["report"] = time.perf_counter() - tick
    result["timings"] = {k: round(v, 2) for k, v in timings.items()}
    write_json(out / "metrics.json", result)

    weeks = result["test_weeks"]
    print(f"infer: run {run_id}, held-out weeks {weeks['from']} to {weeks['to']} ({weeks['rows']:,} rows); "
          f"holiday weeks in them: {', '.join(weeks['holidays']) or 'none'} (`salesfc backtest` measures all of "
          "them)")
    for line in comparison_table(result):
        print("  " + line)
    interval = result["model"].get("quantiles")
    if interval:
        print(f"infer: the model's {interval['band']} band holds {interval['coverage']:.1%} of the held-out actuals "
              f"(nominal {interval['nominal']:.0%}; each week's widened by the errors of the {band.RECENT_WEEKS} "
              "weeks before it)")
    level = result.get("level_correction")
    if level:
        print(f"infer: the model's and the tree peer's forecasts are level-corrected by their errors of the latest "
              f"{level['recent_weeks']} held-out weeks known when each was made; next week's by "
              f"x{level['next_week']:.3f}")
    print(f"infer: forecast for {manifest['next_week']}: {len(next_only):,} series, total "
          f"${next_only['predicted_sales'].sum():,.0f}")
    if forecaster.horizon > 1:
        print(f"infer: and for the {forecaster.horizon - 1} weeks after it, to {forecast['week'].max():%Y-%m-%d} "
              "(predictions.parquet, column horizon)")
        print("  " + "\n  ".join(horizon_table(result["by_horizon"])))
    print(f"infer: wrote {shown(out)}/ (predictions.parquet, metrics.json, report.md)")
    return 0
