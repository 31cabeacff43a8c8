"""The evaluation report: report.md with its plots, for a person deciding whether to trust the forecast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from salesfc.workspace import atomic_path, write_text

COLORS = {"actual": "black", "model": "tab:blue", "gradient_boosted_trees": "tab:orange",
          "seasonal_naive": "tab:green", "last_value": "tab:gray", "moving_average_4": "tab:brown",
          "series_mean": "tab:olive", "expected_sales": "tab:red"}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        # Every figure has constrained layout, which already fits its labels and legend in the figure; bbox_inches=
        # "tight" would draw each figure once more to find what it crops (about 0.3 s a figure).
        fig.savefig(tmp, format="png", dpi=110)


def dollars(ax) -> None:
    """Dollar amounts with thousands separators on the y axis: "$12,500", not "12500"."""
    from matplotlib.ticker import StrMethodFormatter

    ax.yaxis.set_major_formatter(StrMethodFormatter("${x:,.0f}"))


def _dates(ax) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def label(name: str) -> str:
    return {"gradient_boosted_trees": "tree peer (gradient-boosted trees)", "moving_average_4": "4-week moving average",
            "noise_floor": "noise floor (noiseless signal)"}.get(name, name.replace("_", " "))


def best_naive(result: dict) -> str:
    """The naive baseline with the lowest WMAE: the one a forecast has to beat before anything else."""
    naive = {k: v for k, v in result["baselines"].items() if k != "gradient_boosted_trees"}
    return min(naive, key=lambda name: naive[name]["wmae"])


def pick_series(holdout: pd.DataFrame, count: int) -> list[tuple[int, int]]:
    """The largest series (they dominate WMAE) and, for the other half, series of the middle of the range."""
    totals = holdout.groupby(["store", "dept"])["actual"].sum().sort_values(ascending=False)
    big = list(totals.index[: (count + 1) // 2])
    middle = totals.index[len(totals) // 2:]
    step = max(1, len(middle) // max(1, count - len(big)))
    return big + [key for key in list(middle[::step]) if key not in big][: count - len(big)]


def plot_series(holdout: pd.DataFrame, forecast: pd.DataFrame, count: int, path: Path, naive: str) -> None:
    """Actual sales, the model, the tree peer and the best naive baseline (``naive``) for a few series."""
    plt = _figure()
    chosen = pick_series(holdout, count)
    columns = 2
    rows = max(1, (len(chosen) + 1) // columns)
    # constrained layout keeps each panel's title clear of the dates of the panel above; one legend for all panels,
    # below them, so that no line is hidden behind it.
    fig, axes = plt.subplots(rows, columns, figsize=(12, 3.2 * rows + 1.0), squeeze=False, layout="constrained")
    for ax, (store, dept) in zip(axes.flat, chosen):
        series = holdout[(holdout["store"] == store) & (holdout["dept"] == dept)].sort_values("week")
        weeks = series["week"].dt.tz_localize(None)
        ax.plot(weeks, series["actual"], color=COLORS["actual"], lw=2, label="actual")
        # With --quantiles: the model's band, from its lowest quantile to its highest.
        bands = sorted((c for c in series.columns if c.startswith("model_p")),
                       key=lambda c: float(c.removeprefix("model_p")))
        if bands:
            low, high = bands[0], bands[-1]
            ax.fill_between(weeks, series[low], series[high], color=COLORS["model"], alpha=0.15, lw=0,
                            label=f"model: {low.removeprefix('model_').upper()} to {high.removeprefix('model_').upper()}")
        for name in dict.fromkeys(("model", "gradient_boosted_trees", naive)):
            ax.plot(weeks, series[f"forecast_{name}"], color=COLORS[name], lw=1.2,
                    label=label(name) + (" (best naive baseline)" if name == naive else ""))
        if "expected_sales" in series:
            ax.plot(weeks, series["expected_sales"], color=COLORS["expected_sales"], lw=0.8, ls=":",
                    label="noiseless signal")
        ahead = forecast[(forecast["store"] == store) & (forecast["dept"] == dept)].sort_values("week")
        if len(ahead):
            future = ahead["week"].dt.tz_localize(None)
            ahead_bands = sorted((c for c in ahead.columns if c.startswith("predicted_sales_p")),
                                 key=lambda c: float(c.removeprefix("predicted_sales_p")))
            if ahead_bands and len(ahead) > 1:  # the band of the weeks ahead (--horizon), from the lowest quantile
                ax.fill_between(future, ahead[ahead_bands[0]], ahead[ahead_bands[-1]], color=COLORS["model"],
                                alpha=0.3, lw=0)
            ax.scatter(future, ahead["predicted_sales"], color=COLORS["model"], marker="*",
                       s=120 if len(ahead) == 1 else 40, zorder=3,
                       label="model: next week" if len(ahead) == 1 else f"model: the next {len(ahead)} weeks")
        ax.set_title(f"store {store}, department {dept}", fontsize=10)
        ax.tick_params(labelsize=8)
        dollars(ax)
        _dates(ax)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    fig.suptitle("Held-out weeks: forecasts against actual weekly sales")
    _save(fig, path)
    plt.close(fig)


def plot_error_by_week(holdout: pd.DataFrame, path: Path) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(12, 4.2), layout="constrained")
    names = ["model", "gradient_boosted_trees", "moving_average_4", "seasonal_naive", "last_value"]
    if "expected_sales" in holdout:
        holdout = holdout.assign(forecast_noise_floor=holdout["expected_sales"])
        names.append("noise_floor")
    errors = pd.DataFrame({name: (holdout[f"forecast_{name}"] - holdout["actual"]).abs() for name in names})
    errors_by_week = errors.groupby(holdout["week"]).mean()
    for name in names:
        error = errors_by_week[name]
        ax.plot(error.index.tz_localize(None), error.values, marker="o", ms=3,
                color=COLORS.get(name, "tab:red"), ls=":" if name == "noise_floor" else "-",
                lw=2 if name == "model" else 1.2, label=label(name))
    holidays = holdout.loc[holdout["is_holiday"] > 0, "week"].unique()
    for week in holidays:
        ax.axvline(pd.Timestamp(week).tz_localize(None), color="tab:purple", alpha=0.3, lw=6)
    ax.set_ylabel("mean absolute error per series")
    dollars(ax)
    _dates(ax)
    ax.set_title("Error by held-out week (shaded: holiday weeks, weighted x5 in WMAE)")
    # Outside the axes, on the right: inside, it covered the lines of the busiest weeks.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, path)
    plt.close(fig)


def plot_horizons(holdout: pd.DataFrame, result: dict, path: Path) -> None:
    """WMAE by horizon, model and naive baselines; with quantiles, the band's share of actuals by horizon."""
    plt = _figure()
    table = result["by_horizon"]
    band = "quantiles" in table[0]
    # The forecasters' legend below the panels: inside, it hid the middle of the chart (the naive baselines' lines).
    fig, axes = plt.subplots(1, 2 if band else 1, figsize=(12 if band else 7, 4.6), squeeze=False,
                             layout="constrained")
    steps = [entry["horizon"] for entry in table]
    # Plotted, and so listed in the legend, with the model, the tree peer and the noise floor first.
    first = ("model", "gradient_boosted_trees", "noise_floor")
    for name in sorted(table[0]["wmae"], key=lambda name: first.index(name) if name in first else len(first)):
        axes[0, 0].plot(steps, [entry["wmae"].get(name, np.nan) for entry in table], marker="o", ms=3,
                        color=COLORS.get(name, "tab:red"), label=label(name),
                        ls=":" if name == "noise_floor" else "-")
    axes[0, 0].set_xlabel("weeks ahead")
    axes[0, 0].set_ylabel("WMAE ($)")
    axes[0, 0].set_title("Held-out WMAE by horizon")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    dollars(axes[0, 0])
    if band:
        nominal = table[0]["quantiles"]["nominal"]
        axes[0, 1].plot(steps, [entry["quantiles"]["coverage"] for entry in table], marker="o", ms=3,
                        color=COLORS["model"], label="all weeks")
        axes[0, 1].axhline(nominal, color="grey", ls=":", label=f"nominal {nominal:.0%}")
        axes[0, 1].set_ylim(0, 1)
        axes[0, 1].set_xlabel("weeks ahead")
        axes[0, 1].set_title(f"Share of actuals inside the {table[0]['quantiles']['band']} band")
        axes[0, 1].legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_training(training: dict, path: Path) -> None:
    """Both losses, validation WMAE in dollars beside them, and the epoch that was kept."""
    plt = _figure()
    history = training["history"]
    best = training["best_epoch"]
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, wmae_ax) = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label="training weeks")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], label="validation weeks")
    loss_ax.set_ylabel("loss (weighted Huber, sales / series scale)")
    loss_ax.set_title("What the network minimizes", fontsize=10)
    wmae_ax.plot(epochs, [h["val_wmae"] for h in history], color="tab:orange", marker="o", ms=3)
    wmae_ax.set_ylabel("validation WMAE")
    wmae_ax.set_title("What a planner sees: validation WMAE", fontsize=10)
    dollars(wmae_ax)
    for ax in (loss_ax, wmae_ax):
        ax.axvline(best, color="tab:green", ls="--", lw=1, label=f"kept: epoch {best}")
        ax.set_xlabel("epoch")
    loss_ax.legend(fontsize=8)
    fig.suptitle(f"Training {training['run_id']}: {training['epochs_run']} epochs, the averaged weights of epoch "
                 f"{best} kept (lowest validation loss)")
    _save(fig, path)
    plt.close(fig)


def _markdown_table(result: dict) -> list[str]:
    rows = [("**model**", result["model"])] + [(name.replace("_", " "), m) for name, m in result["baselines"].items()]
    lines = ["| forecaster | WMAE | MAE | RMSE | MAPE | R² |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in rows:
        lines.append(f"| {name} | {m['wmae']:,.0f} | {m['mae']:,.0f} | {m['rmse']:,.0f} | {m['mape']:.2f}% | "
                     f"{m['r2']:.4f} |")
    if result["noise_floor"]:
        floor = result["noise_floor"]
        lines.append(f"| noise floor (MAE/WMAE only) | {floor['wmae']:,.0f} | {floor['mae']:,.0f} | | | |")
    return lines


def findings(result: dict) -> list[str]:
    model = result["model"]
    best_name = best_naive(result)
    best = result["baselines"][best_name]
    lines = [f"- The model's WMAE is {model['wmae'] / best['wmae']:.1%} of the best naive baseline's "
             f"({best_name.replace('_', ' ')}, ${best['wmae']:,.0f})."]
    gbt = result["baselines"].get("gradient_boosted_trees")
    if gbt:
        gap = model["wmae"] / gbt["wmae"] - 1
        lines.append(f"- Against gradient-boosted trees on the same features: {gap:+.1%} WMAE "
                     f"({'better' if gap < 0 else 'worse'}), MAPE {model['mape']:.2f}% against {gbt['mape']:.2f}%.")
    if result["noise_floor"]:
        floor = result["noise_floor"]
        lines.append(f"- The noise floor (predicting the generator's noiseless signal, the median of its noise) is "
                     f"${floor['wmae']:,.0f} WMAE: the model is at {model['wmae'] / floor['wmae']:.3f}x the lowest "
                     "absolute error any forecaster can expect here. It bounds MAE and WMAE only, not RMSE, MAPE or "
                     "R².")
    lines.append(f"- MAPE counts rows with actual sales of at least $1,000; {model['mape_rows_excluded']:,} of "
                 f"{model['n_rows']:,} rows are below that and left out of it.")
    fallback = {k: v.get("fallback_rows") for k, v in result["baselines"].items() if v.get("fallback_rows")}
    if fallback:
        lines.append("- Rows where a naive baseline had no value where it looks and fell back (see "
                     "salesfc.baselines): " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in fallback.items())
                     + ".")
    return lines


def write(out: Path, result: dict, holdout: pd.DataFrame, forecast: pd.DataFrame, training: dict,
          n_series: int) -> None:
    ahead = holdout
    holdout = holdout[holdout["horizon"] == 1]  # the plots and the table: next week's forecasts
    if n_series:
        plot_series(holdout, forecast, n_series, out / "forecast_vs_actual.png", best_naive(result))
    plot_error_by_week(holdout, out / "error_by_week.png")
    horizons = []
    if result.get("by_horizon"):
        from salesfc.infer import horizon_table

        plot_horizons(ahead, result, out / "horizons.png")
        horizons = ["## By horizon", "",
                    f"The model forecasts {result['horizon']} weeks from each origin. Held-out WMAE at each horizon, "
                    "against the naive baselines at the same horizon (they carry the origin's values forward) and the "
                    "tree peer (beyond one week: one model with the horizon and the target week's calendar as "
                    "features):", "", "```", *horizon_table(result["by_horizon"]),
                    "```", "", "![WMAE by horizon](horizons.png)", ""]
    plot_training(training, out / "training.png")
    weeks = result["test_weeks"]
    lines = [
        f"# Sales forecast report: run {result['run_id']}",
        "",
        f"Data: {result['data']}. Held-out test weeks {weeks['from']} to {weeks['to']} ({weeks['rows']:,} rows), "
        f"never seen by training or early stopping; holiday weeks in them: {', '.join(weeks['holidays']) or 'none'}. "
        "Next week's forecast "
        f"({result['next_week']}, {result['forecast_rows']:,} series) is in predictions.parquet.",
        "",
        "## Accuracy on the held-out weeks",
        "",
        *_markdown_table(result),
        "",
        *findings(result),
        "",
        "WMAE: mean absolute error with holiday weeks weighted 5 to 1 (the Kaggle measure). All figures in dollars "
        "of weekly sales. Weather, fuel, CPI, unemployment and markdowns of a held-out week are its recorded values "
        "(the Kaggle convention), not forecasts of them. This is one window; `salesfc backtest` measures four, "
        "holidays included.",
        "",
        *horizons,
        "## Forecasts against actual sales",
        "",
        "![forecast vs actual](forecast_vs_actual.png)" if n_series else "(no series plotted: --plot-series 0)",
        "",
        "## Error by week",
        "",
        "![error by week](error_by_week.png)",
        "",
        "## Training",
        "",
        f"{training['epochs_run']} epochs on {training['world_size']} process(es) ({training['device']}), best "
        f"epoch {training['best_epoch']}, {training['samples_per_second']:,} samples/s; training set read through "
        f"Feast ({training['offline_store']} offline store) in {training['retrieval_seconds']} s.",
        "",
        "![training curves](training.png)",
        "",
    ]
    write_text(out / "report.md", "\n".join(lines))
