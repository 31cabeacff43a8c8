"""P10/P50/P90 bands: trained with --quantiles, written by infer, scored on the held-out weeks, drawn in the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_a_quantile_model_writes_ordered_bands_and_scores_them(tmp_path, run_salesfc):
    workdir = str(tmp_path / "work")
    run_salesfc("prep", "--size", "tiny", "--workdir", workdir)
    # One week ahead, so that every held-out row is scored by the one band (the multi-horizon test below: each).
    run_salesfc("train", "--workdir", workdir, "--run-id", "bands", "--epochs", "8", "--quantiles", "0.9,0.1",
                "--horizon", "1")
    result = run_salesfc("infer", "--workdir", workdir)

    report = tmp_path / "work" / "reports" / "bands"
    ahead = pd.read_parquet(report / "predictions.parquet")
    assert (ahead["predicted_sales_p10"] <= ahead["predicted_sales"]).all()
    assert (ahead["predicted_sales"] <= ahead["predicted_sales_p90"]).all()
    assert (ahead["predicted_sales_p90"] > ahead["predicted_sales_p10"]).mean() > 0.95  # a band, not a line
    holdout = pd.read_parquet(report / "holdout_predictions.parquet")
    assert ((holdout["model_p10"] <= holdout["forecast_model"]) & (holdout["forecast_model"] <= holdout["model_p90"])
            ).all()
    band = json.loads((report / "metrics.json").read_text())["model"]["quantiles"]
    inside = ((holdout["actual"] >= holdout["model_p10"]) & (holdout["actual"] <= holdout["model_p90"])).mean()
    assert band["band"] == "p10-p90" and band["nominal"] == 0.8
    assert band["coverage"] == pytest.approx(inside)
    # Eight epochs on tiny data: a rough band, but one that holds most actuals and not all.
    assert 0.5 < band["coverage"] < 0.99
    assert set(band["pinball"]) == {"p10", "p50", "p90"} and all(np.isfinite(list(band["pinball"].values())))
    assert f"p10-p90 band holds {band['coverage']:.1%}" in result.stdout
    training = json.loads((tmp_path / "work" / "models" / "bands" / "training.json").read_text())
    assert training["model_config"]["quantiles"] == [0.1, 0.5, 0.9]
    # Calibrated on the validation weeks: at least the nominal share of them inside, never narrowed.
    assert training["band"]["validation_coverage_after"] >= 0.8 and min(training["band"]["widen"]) >= 0


def test_quantiles_must_lie_between_0_and_1(tmp_path, run_salesfc):
    bad = run_salesfc("train", "--workdir", str(tmp_path), "--quantiles", "0.1,1.5", check=False)
    assert bad.returncode == 2
    assert "--quantiles" in bad.stderr and "strictly between 0 and 1" in bad.stderr


def test_a_multi_horizon_model_forecasts_every_week_ahead_and_is_scored_at_each(tmp_path, run_salesfc):
    workdir = str(tmp_path / "work")
    run_salesfc("prep", "--size", "tiny", "--workdir", workdir)
    run_salesfc("train", "--workdir", workdir, "--run-id", "ahead", "--epochs", "4", "--members", "1",
                "--horizon", "4", "--quantiles", "0.1,0.9")
    result = run_salesfc("infer", "--workdir", workdir)
    report = tmp_path / "work" / "reports" / "ahead"
    prep = json.loads((tmp_path / "work" / "data" / "prep.json").read_text())

    # Every series, every week of the horizon, from next week on, each with its band.
    ahead = pd.read_parquet(report / "predictions.parquet")
    assert len(ahead) == 4 * len(prep["forecast_series"])
    first = pd.Timestamp(prep["next_week"], tz="UTC")
    for h in range(1, 5):
        rows = ahead[ahead["horizon"] == h]
        assert len(rows) == len(prep["forecast_series"]) and (rows["week"] == first + pd.Timedelta(weeks=h - 1)).all()
    assert ((ahead["predicted_sales_p10"] <= ahead["predicted_sales"])
            & (ahead["predicted_sales"] <= ahead["predicted_sales_p90"])).all()
    assert ahead.groupby("horizon")["predicted_sales"].sum().nunique() == 4  # four forecasts, not one repeated

    # The held-out weeks are forecast 1 to 4 weeks ahead, each scored against the baselines at the same horizon.
    holdout = pd.read_parquet(report / "holdout_predictions.parquet")
    metrics = json.loads((report / "metrics.json").read_text())
    test_from = pd.Timestamp(metrics["test_weeks"]["from"], tz="UTC")
    assert sorted(holdout["horizon"].unique()) == [1, 2, 3, 4] and (holdout["week"] >= test_from).all()
    assert holdout["forecast_gradient_boosted_trees"].notna().all()  # the peer forecasts every horizon too
    table = metrics["by_horizon"]
    assert [entry["horizon"] for entry in table] == [1, 2, 3, 4]
    assert table[0]["wmae"]["model"] == pytest.approx(metrics["model"]["wmae"])
    for entry in table:
        rows = holdout[holdout["horizon"] == entry["horizon"]]
        assert entry["rows"] == len(rows)
        assert {"model", "gradient_boosted_trees", "seasonal_naive", "last_value", "moving_average_4",
                "series_mean"} <= set(entry["wmae"])
        weight = np.where(rows["is_holiday"] > 0, 5.0, 1.0)
        assert entry["wmae"]["model"] == pytest.approx(
            (weight * (rows["forecast_model"] - rows["actual"]).abs()).sum() / weight.sum(), rel=1e-6)
        assert 0 < entry["quantiles"]["coverage"] <= 1
    assert "weeks ahead" in result.stdout and "to " + f"{first + pd.Timedelta(weeks=3):%Y-%m-%d}" in result.stdout
    assert "## By horizon" in (report / "report.md").read_text() and (report / "horizons.png").stat().st_size > 0
    training = json.loads((tmp_path / "work" / "models" / "ahead" / "training.json").read_text())
    assert training["model_config"]["horizon"] == 4 and len(training["band"]["widen"]) == 4

    # The backtest forecasts each fold's weeks at every horizon too.
    out = run_salesfc("backtest", "--workdir", workdir, "--run-id", "bt", "--folds", "2", "--fold-weeks", "8",
                      "--epochs", "2", "--members", "1", "--horizon", "4")
    summary = json.loads((tmp_path / "work" / "backtests" / "bt" / "backtest.json").read_text())
    assert [entry["horizon"] for entry in summary["by_horizon"]] == [1, 2, 3, 4]
    assert summary["by_horizon"][0]["wmae"]["model"] == pytest.approx(summary["mean"]["model"]["wmae"])
    assert all("gradient_boosted_trees" in entry["wmae"] for entry in summary["by_horizon"])
    assert "weeks ahead" in out.stdout
    assert "weeks ahead" in (tmp_path / "work" / "backtests" / "bt" / "backtest.md").read_text()


def test_a_horizon_beyond_39_weeks_is_refused(tmp_path, run_salesfc):
    bad = run_salesfc("train", "--workdir", str(tmp_path), "--horizon", "40", check=False)
    assert bad.returncode == 2
    assert "--horizon" in bad.stderr and "from 1 to 39" in bad.stderr
