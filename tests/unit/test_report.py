"""The report's plots and text: the lines a reader needs, legends that hide nothing, dollars on the axes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from salesfc import report

NAMES = ("model", "gradient_boosted_trees", "last_value", "seasonal_naive", "moving_average_4", "series_mean")


def scores(wmae: float) -> dict:
    return {"wmae": wmae, "mae": wmae, "rmse": wmae * 2, "mape": 10.0, "r2": 0.9, "n_rows": 40,
            "mape_rows_excluded": 3}


@pytest.fixture
def result():
    baselines = {name: scores(w) for name, w in (("gradient_boosted_trees", 1100.0), ("last_value", 1500.0),
                                                  ("seasonal_naive", 1600.0), ("moving_average_4", 1200.0),
                                                  ("series_mean", 1400.0))}
    baselines["moving_average_4"]["fallback_rows"] = 2
    return {"run_id": "r1", "data": "synthetic", "next_week": "2012-11-02", "forecast_rows": 4,
            "model": scores(1000.0), "baselines": baselines, "noise_floor": scores(900.0),
            "test_weeks": {"from": "2012-08-03", "to": "2012-10-26", "rows": 40, "holidays": ["Labor Day 2012-09-07"]}}


@pytest.fixture
def holdout():
    rng = np.random.default_rng(1)
    weeks = pd.date_range("2012-08-03", periods=10, freq="7D", tz="UTC")
    rows = []
    for store, dept, level in ((1, 1, 50_000.0), (1, 2, 5_000.0), (2, 1, 20_000.0), (2, 3, 800.0)):
        for week in weeks:
            actual = level * (1 + 0.1 * rng.standard_normal())
            rows.append({"store": store, "dept": dept, "week": week, "horizon": 1, "actual": actual,
                         "is_holiday": int(week == pd.Timestamp("2012-09-07", tz="UTC")), "expected_sales": level,
                         **{f"forecast_{n}": actual * (1 + 0.05 * rng.standard_normal()) for n in NAMES}})
    return pd.DataFrame(rows)


@pytest.fixture
def forecast():
    return pd.DataFrame({"store": [1, 1, 2, 2], "dept": [1, 2, 1, 3], "week": pd.Timestamp("2012-11-02", tz="UTC"),
                         "horizon": 1, "predicted_sales": [51_000.0, 5_100.0, 20_500.0, 790.0]})


@pytest.fixture
def figures(monkeypatch):
    """The figures the report saves, by file name (and the files written, so the PNGs exist)."""
    saved = {}
    original = report._save

    def keep(fig, path):
        saved[path.name] = fig
        original(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    return saved


def training() -> dict:
    history = [{"epoch": k, "train_loss": 0.01 / k, "val_loss": 0.004 + abs(k - 3) * 1e-4,
                "val_wmae": 4000 + 100 * abs(k - 3)} for k in range(1, 7)]
    return {"run_id": "r1", "history": history, "best_epoch": 3, "epochs_run": 6, "world_size": 2, "device": "cpu",
            "samples_per_second": 1000, "offline_store": "duckdb", "retrieval_seconds": 1.0}


def test_the_best_naive_baseline_ignores_the_tree_peer(result):
    assert report.best_naive(result) == "moving_average_4"
    result["baselines"]["last_value"]["wmae"] = 1000.0
    assert report.best_naive(result) == "last_value"


def test_forecast_plot_draws_the_best_naive_baseline_with_one_legend_outside_the_panels(result, holdout, forecast,
                                                                                        figures, tmp_path):
    report.write(tmp_path, result, holdout, forecast, training(), 4)
    fig = figures["forecast_vs_actual.png"]
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert len(panels) == 4
    for ax in panels:
        labels = [line.get_label() for line in ax.lines]
        assert "4-week moving average (best naive baseline)" in labels and "actual" in labels
        assert ax.get_legend() is None  # no legend inside a panel, over the lines
        assert ax.yaxis.get_major_formatter()(12500, 0) == "$12,500"
    assert len(fig.legends) == 1
    # Below every panel: the legend's top is under the lowest panel's bottom.
    fig.canvas.draw()
    legend_box = fig.legends[0].get_window_extent()
    assert legend_box.y1 <= min(ax.get_window_extent().y0 for ax in panels)


def test_error_by_week_has_the_moving_average_and_its_legend_beside_the_axes(result, holdout, forecast, figures,
                                                                            tmp_path):
    report.write(tmp_path, result, holdout, forecast, training(), 0)
    assert "forecast_vs_actual.png" not in figures  # --plot-series 0
    ax = figures["error_by_week.png"].axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert "4-week moving average" in labels and "model" in labels and "tree peer (gradient-boosted trees)" in labels
    figures["error_by_week.png"].canvas.draw()
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    assert ax.yaxis.get_major_formatter()(3000, 0) == "$3,000"


def test_training_plot_has_a_title_the_kept_epoch_and_wmae_in_dollars(result, holdout, forecast, figures,
                                                                      tmp_path):
    report.write(tmp_path, result, holdout, forecast, training(), 0)
    fig = figures["training.png"]
    assert "epoch 3 kept" in fig.get_suptitle()
    loss_ax, wmae_ax = fig.axes
    for ax in (loss_ax, wmae_ax):
        marks = [line for line in ax.lines if line.get_label() == "kept: epoch 3"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [3, 3]
    assert list(wmae_ax.lines[0].get_ydata()) == [h["val_wmae"] for h in training()["history"]]
    assert wmae_ax.yaxis.get_major_formatter()(4200, 0) == "$4,200"


def test_report_md_has_the_comparison_table_once(result, holdout, forecast, tmp_path):
    report.write(tmp_path, result, holdout, forecast, training(), 2)
    text = (tmp_path / "report.md").read_text()
    assert text.count("| forecaster |") == 1 and "```" not in text
    assert "moving average 4 2" in text  # the fallback count
    for name in ("forecast_vs_actual.png", "error_by_week.png", "training.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_a_multi_horizon_report_has_its_table_and_plot_by_horizon(result, holdout, forecast, figures, tmp_path):
    later = holdout.assign(horizon=2, forecast_model=holdout["forecast_model"] * 1.1)
    by_horizon = [{"horizon": h, "rows": 40, "wmae": {"model": 1000.0 + 50 * h, "seasonal_naive": 1500.0,
                                                        "last_value": 1400.0 + 80 * h}} for h in (1, 2)]
    report.write(tmp_path, {**result, "horizon": 2, "by_horizon": by_horizon}, pd.concat([holdout, later]),
                 forecast, training(), 2)
    text = (tmp_path / "report.md").read_text()
    assert "## By horizon" in text and "![WMAE by horizon](horizons.png)" in text
    assert text.count("| **model** |") == 1  # the headline table is next week's, once
    lines = figures["horizons.png"].axes[0].get_lines()
    assert [list(line.get_ydata()) for line in lines if line.get_label() == "model"] == [[1050.0, 1100.0]]
    # The plots of next week's forecasts do not mix in the later horizons.
    assert len(figures["error_by_week.png"].axes[0].get_lines()[0].get_xdata()) == 10
