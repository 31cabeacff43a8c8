"""backtest: rolling-origin evaluation, the one way salesfc measures accuracy.

The folds are ``--folds`` consecutive blocks of ``--fold-weeks`` weeks that end with the last week of data. The
default, 4 x 13 weeks, is the last year of data, so every holiday falls in exactly one fold: on the Walmart calendar
(data to 2012-10-26) the folds start 2011-11-04 (Thanksgiving and Christmas), 2012-02-03 (Super Bowl), 2012-05-04
and 2012-08-03 (Labor Day).

For each fold, everything is refitted on the weeks before its first week (its cutoff) and nothing after:

* the network trains on the weeks before ``cutoff - val_weeks`` and picks its epoch on the ``val_weeks`` before the
  cutoff (the same code as `salesfc train`, one process here, one model directory per fold);
* the tree peer is tuned and early-stopped on the same validation weeks (salesfc.baselines, cached per fold);
* the naive baselines read lags and the training weeks' series means.

A forecast of week t is made from the sales up to t - 1 (one week ahead, as the deployed model is used); with
``--horizon H`` each fold week is also forecast 2 ... H weeks ahead, from origins up to H - 1 weeks before the cutoff
(their features end before the cutoff too), and the naive baselines carry their origin's values forward; the tree
peer beyond one week is one model with the horizon as a feature (baselines.tree_peer_ahead). The headline figures
are the one-week forecasts; ``by_horizon`` has every horizon. With ``--quantiles`` each forecast's band is widened
by the errors of the latest weeks known when it was made, as infer does (salesfc.band): the validation weeks at the
fold's start, then its own weeks as their actuals come in. With ``--level-correction on`` the model's and the tree
peer's forecasts follow the level of their own errors of the fold's weeks known when each was made
(salesfc.correction).
The result is one frame of (cutoff, series, week, horizon, actual, one column per forecaster), from which every
table and plot is derived: ``backtests/<id>/predictions.parquet``, ``backtest.json`` (per fold, holiday and other
weeks, mean over folds), ``backtest.md`` and ``backtest.png``.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from salesfc import baselines, correction, distributed, feature_store, metrics, progress
from salesfc.dataset import Split
from salesfc.errors import UserError
from salesfc.infer import (FLOOR_LABEL, Forecaster, forecast_weeks, holiday_weeks, horizon_table, later_weeks,
                           peer_at, recent_origins, score)
from salesfc.tables import TIMESTAMP
from salesfc.workspace import atomic_path, read_json, wait_for_manifest, write_json, write_text

log = logging.getLogger(__name__)

MIN_TRAIN_WEEKS = 26


@dataclass(frozen=True)
class Fold:
    number: int
    cutoff: pd.Timestamp      # first week forecast
    last_week: pd.Timestamp   # last week forecast
    val_start: pd.Timestamp   # first validation week (the network's early stopping, the peer's search)

    def split(self) -> Split:
        return Split(self.val_start, self.cutoff, self.last_week)

    @property
    def name(self) -> str:
        return f"fold-{self.number}-{self.cutoff:%Y%m%d}"


def make_folds(weeks: pd.Series, folds: int, fold_weeks: int, val_weeks: int) -> list[Fold]:
    unique = np.sort(pd.Series(weeks).unique())
    needed = folds * fold_weeks + val_weeks + MIN_TRAIN_WEEKS
    if len(unique) < needed:
        raise UserError(f"{len(unique)} weeks of data cannot hold --folds {folds} x --fold-weeks {fold_weeks} "
                        f"after --val-weeks {val_weeks} and {MIN_TRAIN_WEEKS} training weeks ({needed} weeks); "
                        "use fewer or shorter folds")
    result = []
    for k in range(folds):
        end = len(unique) - (folds - 1 - k) * fold_weeks  # one past the fold's last week
        start = end - fold_weeks
        result.append(Fold(k + 1, pd.Timestamp(unique[start]), pd.Timestamp(unique[end - 1]),
                           pd.Timestamp(unique[start - val_weeks])))
    return result


def run_fold(config, context, fold: Fold, frame: pd.DataFrame, data: str, has_signal: bool, out,
             correct: bool = False) -> pd.DataFrame:
    """Refit everything on the weeks before the fold, forecast its weeks (with ``correct``, level-corrected:
    salesfc.correction); returns the fold's rows of the frame."""
    from salesfc import train

    known = frame[frame[TIMESTAMP] < fold.cutoff]  # the fold's weeks and later are not even passed on
    split = fold.split()
    run_dir = out / fold.name
    run_dir.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    done = run_dir / "training.json"
    if done.exists():  # a finished fold is kept: an interrupted backtest resumes where it stopped
        trained = read_json(done)
        if (trained["settings"] != train.run_settings(config) or trained["split"] != split.to_json()
                or read_json(run_dir / "preprocess.json")["data"] != data):
            raise UserError(f"{out} holds folds trained with other settings or data; use a new --run-id")
    else:
        train.fit_model(config, context, run_dir, known, split, {}, data)
    forecaster = Forecaster(run_dir)
    model_seconds = time.perf_counter() - tick
    since = recent_origins(forecaster, fold.cutoff)
    origins = frame[(frame[TIMESTAMP] >= since) & (frame[TIMESTAMP] <= fold.last_week)].reset_index(drop=True)
    rows = origins[origins[TIMESTAMP] >= fold.cutoff]
    part = split.part(known[TIMESTAMP])
    tick = time.perf_counter()
    peer = baselines.tree_peer(forecaster.preprocessor, known[part == 0], known[part == 1], rows,
                               cache=config.workspace.baselines, data=data, split=split.to_json(),
                               refit=forecaster.refit)
    targets, bands, at, _ = forecast_weeks(forecaster, origins, fold.cutoff, fold.last_week)
    later_at, later_step = later_weeks(targets, at)
    ahead = None
    if len(later_at):
        ahead = baselines.tree_peer_ahead(forecaster.preprocessor, known, split, origins, later_at, later_step,
                                          cache=config.workspace.baselines, data=data, refit=forecaster.refit)
    _, table = score(targets, bands, known[part == 0], peer_at(peer, origins, rows.index, at, targets, ahead),
                     has_signal, baselines.year_before(frame, targets), fold.cutoff, correct)
    log.info("fold %d (%s to %s): model %.0f s, tree peer %.0f s%s", fold.number, f"{fold.cutoff:%Y-%m-%d}",
             f"{fold.last_week:%Y-%m-%d}", model_seconds, time.perf_counter() - tick,
             " (cached)" if peer["cached"] else "")
    return table.assign(cutoff=fold.cutoff)


def summarize(table: pd.DataFrame, folds: list[Fold]) -> dict:
    """Per fold (all weeks, holiday weeks, other weeks) and the mean over folds, for every forecaster, of the
    one-week-ahead forecasts; with more horizons, ``by_horizon``: the mean over folds of each horizon's WMAE."""
    names = [c.removeprefix("forecast_") for c in table.columns if c.startswith("forecast_")]
    if "expected_sales" in table and table["expected_sales"].notna().all():
        table = table.assign(forecast_noise_floor=table["expected_sales"])
        names.append("noise_floor")
    ahead = table
    table = table[table["horizon"] == 1]

    def measure(part: pd.DataFrame) -> dict:
        return {name: metrics.evaluate(part["actual"], part[f"forecast_{name}"], part["is_holiday"])
                for name in names}

    # The model's other quantiles (model_p10, model_p90, ... when trained with --quantiles) beside its median.
    band_columns = {metrics.quantile_of(c.removeprefix("model_")): c for c in table.columns
                    if c.startswith("model_p")}
    result_folds = []
    for fold in folds:
        part = table[table["cutoff"] == fold.cutoff]
        holiday = part["is_holiday"] > 0
        result_folds.append({
            "fold": fold.number, "from": f"{fold.cutoff:%Y-%m-%d}", "to": f"{fold.last_week:%Y-%m-%d}",
            "validation_from": f"{fold.val_start:%Y-%m-%d}", "rows": int(len(part)),
            "holidays": holiday_weeks(part["week"]),
            "all_weeks": measure(part), "holiday_weeks": measure(part[holiday]) if holiday.any() else None,
            "other_weeks": measure(part[~holiday]),
        })
        if band_columns:
            bands = {0.5: part["forecast_model"], **{q: part[c] for q, c in band_columns.items()}}
            result_folds[-1]["model_quantiles"] = metrics.intervals(part["actual"], bands, part["is_holiday"])
    mean = {name: {key: statistics.fmean(f["all_weeks"][name][key] for f in result_folds)
                   for key in ("wmae", "mae", "rmse", "mape", "r2")} for name in names}
    result = {"folds": result_folds, "mean": mean, "forecasters": names}
    if ahead["horizon"].max() > 1:
        result["by_horizon"] = horizon_summary(ahead, folds, names, band_columns)
    return result


def horizon_summary(table: pd.DataFrame, folds: list[Fold], names: list[str], band_columns: dict) -> list[dict]:
    """Per horizon, the mean over folds of each forecaster's WMAE (those that forecast that far), and with
    quantiles of the band's coverage (all weeks, holiday weeks) and pinball losses."""
    result = []
    for h, rows in table.groupby("horizon"):
        per_fold = [rows[rows["cutoff"] == fold.cutoff] for fold in folds]
        per_fold = [part for part in per_fold if len(part)]
        entry = {"horizon": int(h), "rows": int(len(rows)), "wmae": {
            name: statistics.fmean(metrics.evaluate(part["actual"], part[f"forecast_{name}"],
                                                    part["is_holiday"])["wmae"] for part in per_fold)
            for name in names if rows[f"forecast_{name}"].notna().all()}}
        if band_columns:
            bands = [metrics.intervals(part["actual"], {0.5: part["forecast_model"],
                                                        **{q: part[c] for q, c in band_columns.items()}},
                                       part["is_holiday"]) for part in per_fold]
            holiday = [b["coverage_holiday"] for b in bands if b["coverage_holiday"] is not None]
            entry["quantiles"] = {
                "coverage": statistics.fmean(b["coverage"] for b in bands),
                "coverage_holiday": statistics.fmean(holiday) if holiday else None,
                "pinball": {name: statistics.fmean(b["pinball"][name] for b in bands) for name in bands[0]["pinball"]}}
        result.append(entry)
    return result


COLUMNS = ("model", baselines.PEER, *baselines.NAIVE)


def text_table(summary: dict) -> list[str]:
    """WMAE per fold and the mean over folds (the figure accuracy claims use), one line per forecaster."""
    names = [n for n in COLUMNS if n in summary["forecasters"]] + \
        (["noise_floor"] if "noise_floor" in summary["forecasters"] else [])
    head = f"{'WMAE ($)':<28}" + "".join(f"{f['from']:>12}" for f in summary["folds"]) + f"{'mean':>12}"
    lines = [head]
    for name in names:
        label = FLOOR_LABEL if name == "noise_floor" else name
        lines.append(f"{label:<28}" + "".join(f"{f['all_weeks'][name]['wmae']:>12,.0f}" for f in summary["folds"])
                     + f"{summary['mean'][name]['wmae']:>12,.0f}")
    lines.append(f"{'holiday weeks in fold':<28}" + "".join(f"{len(f['holidays']):>12}" for f in summary["folds"]))
    return lines


def band_lines(summary: dict) -> list[str]:
    """The model's quantile band fold by fold (trained with --quantiles): coverage and pinball loss."""
    lines = []
    for f in summary["folds"]:
        band = f.get("model_quantiles")
        if band:
            holiday = "" if band["coverage_holiday"] is None else f", holiday weeks {band['coverage_holiday']:.1%}"
            lines.append(f"fold {f['fold']}: {band['band']} band holds {band['coverage']:.1%} of actuals (nominal "
                         f"{band['nominal']:.0%}{holiday}); pinball loss " + ", ".join(
                             f"{name} ${value:,.0f}" for name, value in band["pinball"].items()))
    return lines


def holiday_lines(summary: dict) -> list[str]:
    """Holiday weeks against the rest, model and tree peer, fold by fold."""
    lines = []
    for f in summary["folds"]:
        if not f["holiday_weeks"]:
            continue
        h, o = f["holiday_weeks"], f["other_weeks"]
        lines.append(f"fold {f['fold']} ({', '.join(f['holidays'])}): MAE on holiday weeks model "
                     f"${h['model']['mae']:,.0f}, tree peer ${h[baselines.PEER]['mae']:,.0f}; other weeks model "
                     f"${o['model']['mae']:,.0f}, tree peer ${o[baselines.PEER]['mae']:,.0f}")
    return lines


def horizon_lines(summary: dict) -> list[str]:
    """WMAE by horizon (mean over folds), one line per horizon; with quantiles, the band's share of actuals."""
    return horizon_table(summary["by_horizon"]) if summary.get("by_horizon") else []


def plot(table: pd.DataFrame, summary: dict, path) -> None:
    from salesfc.report import COLORS, _figure, _save

    plt = _figure()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7))
    names = [n for n in COLUMNS if n in summary["forecasters"]]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [f["all_weeks"][name]["wmae"] for f in summary["folds"]]
        top.bar(np.arange(len(values)) + i * width, values, width, label=name.replace("_", " "),
                color=COLORS.get(name))
    if "noise_floor" in summary["forecasters"]:
        for k, f in enumerate(summary["folds"]):
            top.hlines(f["all_weeks"]["noise_floor"]["wmae"], k - width / 2, k + 0.8 - width / 2, colors="tab:red",
                       linestyles=":", label=FLOOR_LABEL if k == 0 else None)
    top.set_xticks(np.arange(len(summary["folds"])) + 0.4 - width / 2,
                   [f"{f['from']} to {f['to']}\n{', '.join(h.rsplit(' ', 1)[0] for h in f['holidays']) or 'no holiday'}"
                    for f in summary["folds"]], fontsize=8)
    top.set_ylabel("WMAE ($)")
    top.set_title("Rolling-origin backtest: WMAE per fold (each refitted on the weeks before it)")
    top.legend(fontsize=7, ncol=4)
    shown = ["model", baselines.PEER, "seasonal_naive"]
    table = table[table["horizon"] == 1]
    errors = pd.DataFrame({name: (table[f"forecast_{name}"] - table["actual"]).abs() for name in shown})
    by_week = errors.groupby(table["week"]).mean()
    for name in shown:
        bottom.plot(by_week.index.tz_localize(None), by_week[name], marker="o", ms=2, lw=1,
                    color=COLORS.get(name), label=name.replace("_", " "))
    for week in table.loc[table["is_holiday"] > 0, "week"].unique():
        bottom.axvline(pd.Timestamp(week).tz_localize(None), color="tab:purple", alpha=0.3, lw=5)
    bottom.set_ylabel("mean absolute error ($)")
    bottom.set_title("Error by week (shaded: holiday weeks, weighted x5 in WMAE)")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def run(config) -> int:
    workspace = config.workspace
    manifest = wait_for_manifest(workspace, config.data_id, config.wait_timeout)
    store = feature_store.open_store(config)
    reads = feature_store.reads_per_shard(int(feature_store.label_counts(store).sum()), 1, config.rows_per_read)
    with progress.stage("reading every week through Feast", total=reads, unit="read") as bar:
        frame = feature_store.shard_features(store, 0, 1, reads, on_read=bar.update)
    folds = make_folds(frame[TIMESTAMP], config.folds, config.fold_weeks, config.val_weeks)
    backtest_id = config.run_id or datetime.now(timezone.utc).strftime("backtest-%Y%m%d-%H%M%S")
    out = workspace.backtest_dir(backtest_id)
    out.mkdir(parents=True, exist_ok=True)
    print(f"backtest {backtest_id}: {len(folds)} folds of {config.fold_weeks} weeks, "
          f"{folds[0].cutoff:%Y-%m-%d} to {folds[-1].last_week:%Y-%m-%d}; each refitted on the weeks before it "
          f"(the last {config.val_weeks} of them for early stopping and the tree peer's search)", flush=True)
    context = distributed.setup(config.device)  # one process: the folds run one after another
    started = time.perf_counter()
    tables = []
    for fold in folds:
        tick = time.perf_counter()
        tables.append(run_fold(config.for_command("train"), context, fold, frame, manifest["fingerprint"],
                               manifest["has_signal"], out, config.level_correction == "on"))
        part = summarize(tables[-1], [fold])["folds"][0]["all_weeks"]
        print(f"  fold {fold.number}/{len(folds)} {fold.cutoff:%Y-%m-%d} to {fold.last_week:%Y-%m-%d}: WMAE model "
              f"${part['model']['wmae']:,.0f}, tree peer ${part[baselines.PEER]['wmae']:,.0f} "
              f"({time.perf_counter() - tick:.0f} s)", flush=True)
    table = pd.concat(tables, ignore_index=True)
    summary = summarize(table, folds)
    mean = summary["mean"]
    gap = mean["model"]["wmae"] / mean[baselines.PEER]["wmae"] - 1
    result = {"backtest_id": backtest_id, "data": manifest["source"], "fingerprint": manifest["fingerprint"],
              "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.values().items()
                           if k not in ("workdir", "feature_repo", "log_level")},
              "model_vs_tree_peer": round(gap, 4), "seconds": round(time.perf_counter() - started, 1), **summary}
    with atomic_path(out / "predictions.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    write_json(out / "backtest.json", result)
    plot(table, summary, out / "backtest.png")
    lines, holidays = text_table(summary), band_lines(summary) + holiday_lines(summary)
    horizons = horizon_lines(summary)
    write_text(out / "backtest.md", "\n".join([
        f"# Backtest {backtest_id}", "", f"Data: {manifest['source']}. Weather, fuel, CPI, unemployment and "
        "markdowns of a forecast week are its recorded values (the Kaggle convention), not forecasts of them.", "",
        *([f"The model's and the tree peer's forecasts are level-corrected (--level-correction on): each multiplied "
           f"by the ratio of actual to forecast sales of its own next-week forecasts in the latest "
           f"{correction.RECENT_WEEKS} fold weeks known when it was made.", ""]
          if config.level_correction == "on" else []),
        "One week ahead:", "", "```", *lines, "```", "", *[f"- {line}" for line in holidays], "",
        *(["By horizon (WMAE in dollars, mean over folds; the tree peer beyond one week: one model with the horizon "
           "and the target week's calendar as features):", "", "```",
           *horizons, "```", ""] if horizons else []),
        f"Model against the tree peer, mean WMAE over folds: {gap:+.1%}.", "", "![backtest](backtest.png)", ""]))
    for line in lines + holidays + horizons:
        print("  " + line)
    print(f"backtest: mean WMAE over folds: model ${mean['model']['wmae']:,.0f}, tree peer "
          f"${mean[baselines.PEER]['wmae']:,.0f} ({gap:+.1%}; negative: the model is better)")
    print(f"backtest: wrote {out}/ (backtest.json, backtest.md, backtest.png, predictions.parquet)")
    return 0
