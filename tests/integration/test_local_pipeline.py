"""The local pipeline end to end, on the embedded default store (no server), as a user runs it."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
from helpers import one_error_line, tree_digest

from salesfc.data import synthetic

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory, run_salesfc):
    """`salesfc demo` on tiny data: prep, train with 2 processes (DDP over gloo), infer."""
    workdir = tmp_path_factory.mktemp("demo")
    # From the folder above, with a relative --workdir: as `make demo` runs it (./salesfc-work), so the paths it
    # prints can be compared with the README's sample.
    result = run_salesfc("demo", "--size", "tiny", "--workdir", workdir.name, "--run-id", "tiny-demo",
                         cwd=workdir.parent)
    return workdir, result


def test_demo_writes_every_artifact(demo):
    workdir, result = demo
    run = workdir / "models" / "tiny-demo"
    report = workdir / "reports" / "tiny-demo"
    for path in (workdir / "data" / "prep.json", run / "model.pt", run / "checkpoint.pt", run / "preprocess.json",
                 run / "training.json", report / "predictions.parquet", report / "holdout_predictions.parquet",
                 report / "metrics.json", report / "report.md", report / "error_by_week.png",
                 report / "forecast_vs_actual.png"):
        assert path.is_file(), path
    assert (workdir / "models" / "LATEST").read_text().strip() == "tiny-demo"
    assert not list(workdir.rglob("*.pkl")) and not list(workdir.rglob(".*.tmp"))
    for stage in ("prep", "train", "infer"):
        assert f"== salesfc {stage}" in result.stdout
    assert "demo: prep" in result.stdout and "total" in result.stdout


def shape(line: str) -> str:
    """A printed line without what changes from run to run: run ids, dates, numbers, column widths."""
    line = re.sub(r"run-\d{8}-\d{6}|tiny-demo", "RUN", line)
    line = re.sub(r"\d{4}-\d{2}-\d{2}", "DATE", line)
    line = re.sub(r"\$?-?\d[\d,]*(\.\d+)?(%|s\b)?", "N", line)
    return " ".join(line.split())


def test_the_readme_sample_is_what_demo_prints(demo, repo):
    """The README's sample output, line by line, has the shape of what `salesfc demo` prints from the infer stage
    on: the same lines in the same order, the same words and paths; only numbers, dates and the run id differ."""
    workdir, result = demo
    readme = (repo / "README.md").read_text()
    after = readme.split("`make demo` ends with the held-out comparison", 1)[1]
    sample = after.split("```\n", 2)[1].rstrip("\n").splitlines()
    printed = result.stdout.rstrip("\n").splitlines()
    printed = printed[next(i for i, line in enumerate(printed) if line.startswith("infer: run ")):]
    printed = [re.sub(rf"(?<![\w-]){re.escape(workdir.name)}(?![\w-])", "salesfc-work", line) for line in printed]
    assert [shape(line) for line in sample] == [shape(line) for line in printed], (
        "README.md's sample output differs from what `salesfc demo` prints; paste a new run's output:\n"
        + "\n".join(printed))


def test_training_ran_two_ranks_that_agreed(demo):
    workdir, result = demo
    training = json.loads((workdir / "models" / "tiny-demo" / "training.json").read_text())
    assert training["world_size"] == 2 and training["status"] == "finished"
    # Each epoch is logged once, by rank 0, with the throughput of both processes; rank 1 logs no epoch.
    epochs = {rank: [line for line in result.stderr.splitlines()
                     if f"[rank {rank}]" in line and "salesfc.train: epoch " in line] for rank in (0, 1)}
    # With --refit on, the refit's epochs follow the early-stopped run's.
    history = training["history"] + training.get("refit", {}).get("history", [])
    assert len(epochs[0]) == len(history) and epochs[1] == []
    assert all("samples/s on 2 processes)" in line for line in epochs[0])
    assert [f"epoch {h['epoch']}/" in line for h, line in zip(history, epochs[0])] == [True] * len(history)


def test_metrics_have_the_promised_shape_and_the_model_beats_naive_forecasts(demo):
    workdir, _ = demo
    metrics = json.loads((workdir / "reports" / "tiny-demo" / "metrics.json").read_text())
    expected_baselines = {"last_value", "seasonal_naive", "moving_average_4", "series_mean",
                          "gradient_boosted_trees"}
    assert set(metrics["baselines"]) == expected_baselines
    for entry in [metrics["model"], metrics["noise_floor"], *metrics["baselines"].values()]:
        assert {"mae", "rmse", "wmae", "mape", "r2", "n_rows"} <= set(entry)
        assert entry["n_rows"] == metrics["model"]["n_rows"] > 0
    model = metrics["model"]["wmae"]
    assert model < metrics["baselines"]["last_value"]["wmae"]
    assert model < metrics["baselines"]["seasonal_naive"]["wmae"]
    assert metrics["noise_floor"]["wmae"] < model


def test_next_week_forecast_covers_every_active_series(demo):
    workdir, _ = demo
    manifest = json.loads((workdir / "data" / "prep.json").read_text())
    horizon = json.loads((workdir / "models" / "tiny-demo" / "training.json").read_text())["model_config"]["horizon"]
    assert horizon == 13  # the default: next week and the 12 after it, each series once per week ahead
    forecast = pd.read_parquet(workdir / "reports" / "tiny-demo" / "predictions.parquet")
    assert len(forecast) == horizon * len(manifest["forecast_series"])
    next_week = pd.Timestamp(manifest["next_week"], tz="UTC")
    for h, rows in forecast.groupby("horizon"):
        assert len(rows) == len(manifest["forecast_series"]) and not rows.duplicated(["store", "dept"]).any()
        assert (rows["week"] == next_week + pd.Timedelta(weeks=h - 1)).all()
    assert sorted(forecast["horizon"].unique()) == list(range(1, horizon + 1))
    assert forecast["predicted_sales"].notna().all()
    # The default P10/P50/P90 band: never crossing, the median the point forecast.
    assert (forecast["predicted_sales_p10"] <= forecast["predicted_sales"]).all()
    assert (forecast["predicted_sales"] <= forecast["predicted_sales_p90"]).all()


def test_infer_again_reads_the_cached_peer_and_scores_the_same(demo, run_salesfc):
    """The second infer reads the held-out weeks' features only (the peer's forecasts come from its cache, the
    naive baselines' training means from the labels) and must score exactly as the first, which read everything."""
    workdir, _ = demo
    path = workdir / "reports" / "tiny-demo" / "metrics.json"
    first = json.loads(path.read_text())
    again = run_salesfc("infer", "--workdir", str(workdir), "--log-level", "INFO")
    second = json.loads(path.read_text())
    assert "tree peer: cached forecasts" in again.stderr
    assert second["baselines"]["gradient_boosted_trees"]["cached"]
    for result in (first, second):
        result["baselines"]["gradient_boosted_trees"].pop("cached")
    assert (second["model"], second["baselines"], second["test_weeks"]) == \
        (first["model"], first["baselines"], first["test_weeks"])


def test_training_reads_equal_feasts_own_on_demand_path(demo):
    """salesfc applies the on-demand views to whole columns itself (feature_store.OnDemandPlan): every column of
    every row must equal what Feast's get_historical_features computes with the feature service."""
    import numpy as np

    from salesfc import cli, feature_store, settings
    from salesfc.tables import TIMESTAMP

    workdir, _ = demo
    args = cli.build_parser().parse_args(["train", "--workdir", str(workdir)])
    store = feature_store.open_store(settings.Config("train", settings.resolve(args, "train")))
    plan = feature_store.on_demand_plan(store)
    assert plan is not None and [view.name for view in plan.views] == ["feature_transformations",
                                                                       "temporal_transformations"]
    ours = feature_store.historical_features(store)
    labels = feature_store.read_labels(store)
    feasts = store.feast.get_historical_features(entity_df=labels, features=store.service).to_df()
    feasts = feasts.sort_values([TIMESTAMP, "store_dept"]).reset_index(drop=True)
    assert list(ours.columns) == list(feasts.columns) and len(ours) == len(feasts) == len(labels)
    for column in ours.columns:
        if pd.api.types.is_numeric_dtype(ours[column]) and not pd.api.types.is_bool_dtype(ours[column]):
            np.testing.assert_array_equal(ours[column].to_numpy(float, na_value=np.nan),
                                          feasts[column].to_numpy(float, na_value=np.nan), err_msg=column)
        else:
            assert ours[column].astype(object).where(ours[column].notna(), None).tolist() == \
                feasts[column].astype(object).where(feasts[column].notna(), None).tolist(), column


def test_training_never_reads_the_held_out_weeks(demo, monkeypatch):
    """The split is cut from the labels' weeks before any feature is read, and every read of the training set
    stops before the first held-out week; the row counts still name the held-out rows."""
    from salesfc import cli, feature_store, settings, train
    from salesfc.tables import TIMESTAMP
    from salesfc.workspace import read_json

    workdir, _ = demo
    args = cli.build_parser().parse_args(["train", "--workdir", str(workdir), "--rows-per-read", "1500"])
    config = settings.Config("train", settings.resolve(args, "train"))
    reads = []
    original = feature_store.historical_features

    def recorded(store, **options):
        frame = original(store, **options)
        reads.append(frame[TIMESTAMP].max())
        return frame

    monkeypatch.setattr(feature_store, "historical_features", recorded)
    arrays, info, _, split = train.load_training_arrays(config, read_json(workdir / "data" / "prep.json"))
    assert len(reads) > 1 and max(reads) < split.test_start  # several reads of at most 1,500 rows
    assert f"{split.test_start:%Y-%m-%d}" == read_json(workdir / "models" / "tiny-demo" / "training.json")[
        "split"]["test_start"]
    assert info["rows"]["test"] > 0 and len(arrays["train_target"]) == info["rows"]["train"]


def test_check_passes_and_fails_for_the_right_reason(demo, run_salesfc):
    workdir, _ = demo
    # Tiny data is 45 series: enough to beat last value and seasonal naive (asserted above), not always the
    # 4-week average that the default gate (1 x the best naive baseline) holds full-size deployments to.
    ok = run_salesfc("check", "--workdir", str(workdir), "--max-wmae-ratio", "1.5")
    assert "check: 7 of 7 passed" in ok.stdout
    strict = run_salesfc("check", "--workdir", str(workdir), "--max-wmae-ratio", "0.01", check=False)
    assert strict.returncode == 1
    assert "FAIL metrics: model WMAE" in strict.stdout
    missing = run_salesfc("check", "--workdir", str(workdir), "--run-id", "no-such-run", check=False)
    assert missing.returncode == 1 and "FAIL model" in missing.stdout


def test_prep_twice_changes_nothing(tmp_path, run_salesfc):
    args = ("prep", "--size", "tiny", "--workdir", str(tmp_path))
    run_salesfc(*args)
    first = tree_digest(tmp_path / "data")
    online = sqlite3.connect(tmp_path / "feast" / "online_store.db")
    tables = [name for (name,) in online.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    counts = {t: online.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    online.close()
    run_salesfc(*args)
    assert tree_digest(tmp_path / "data") == first
    online = sqlite3.connect(tmp_path / "feast" / "online_store.db")
    assert {t: online.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables} == counts
    assert sum(counts.values()) > 0


def test_bad_input_gives_one_error_and_changes_nothing(tmp_path, run_salesfc):
    workdir = tmp_path / "work"
    run_salesfc("prep", "--size", "tiny", "--workdir", str(workdir))
    before = tree_digest(workdir)
    csvs = tmp_path / "kaggle"
    synthetic.to_kaggle_csvs(synthetic.generate("tiny"), csvs)
    lines = (csvs / "train.csv").read_text().split("\n")
    fields = lines[3].split(",")
    fields[3] = "12,5"  # a decimal comma: one more column on that row
    lines[3] = ",".join(fields[:3]) + ',"12,5",' + ",".join(fields[4:])
    (csvs / "train.csv").write_text("\n".join(lines))

    bad = run_salesfc("prep", "--source", "kaggle", "--kaggle-dir", str(csvs), "--workdir", str(workdir),
                      check=False)
    assert bad.returncode == 1
    assert "train.csv, column Weekly_Sales, row 4: '12,5' is not a number" in one_error_line(bad.stderr)
    assert "Traceback" not in bad.stderr
    # The other two: an empty train.csv, and a row with too many fields (one line, not two).
    for change, message in ((lambda text: "", "train.csv: the file is empty"),
                            (lambda text: text.replace("\n", "\n1,1,2010-02-05,12,5,FALSE\n", 1),
                             "train.csv, row 2: 6 fields where the header has 5")):
        synthetic.to_kaggle_csvs(synthetic.generate("tiny"), csvs)
        (csvs / "train.csv").write_text(change((csvs / "train.csv").read_text()))
        bad = run_salesfc("prep", "--source", "kaggle", "--kaggle-dir", str(csvs), "--workdir", str(workdir),
                          check=False)
        assert bad.returncode == 1 and message in one_error_line(bad.stderr) and "Traceback" not in bad.stderr

    no_dir = run_salesfc("prep", "--source", "kaggle", "--workdir", str(workdir), check=False)
    assert no_dir.returncode == 1 and "needs --kaggle-dir" in one_error_line(no_dir.stderr)
    unknown = run_salesfc("prep", "--sise", "tiny", "--workdir", str(workdir), check=False)
    assert unknown.returncode == 2 and "unrecognized arguments: --sise" in one_error_line(unknown.stderr)
    assert tree_digest(workdir) == before


def test_a_missing_database_is_one_clear_error(tmp_path, run_salesfc):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    result = run_salesfc("prep", "--size", "tiny", "--workdir", str(tmp_path), "--feature-store", "postgres",
                         "--pg-host", "127.0.0.1", "--pg-port", str(port), check=False)
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert f"PostgreSQL salesfc@127.0.0.1:{port}/salesfc" in line and "refused" in line.lower()
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_training_resumes_from_its_checkpoint_after_a_crash(tmp_path, run_salesfc):
    run_salesfc("prep", "--size", "tiny", "--workdir", str(tmp_path))
    args = [sys.executable, "-m", "salesfc", "train", "--workdir", str(tmp_path), "--run-id", "crashy",
            "--epochs", "150", "--patience", "150"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = tmp_path / "models" / "crashy" / "checkpoint.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # a few more epochs
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not (tmp_path / "models" / "crashy" / "training.json").exists()

    import torch

    saved = torch.load(checkpoint, weights_only=True)["EPOCH"]  # 0-based: the last epoch it finished
    assert saved < 149, "the run finished before it could be interrupted"
    resumed = run_salesfc(*args[3:])  # the same command again, as a Job's restart would
    assert f"resuming crashy from epoch {saved + 2}" in resumed.stderr
    training = json.loads((tmp_path / "models" / "crashy" / "training.json").read_text())
    assert [h["epoch"] for h in training["history"]] == list(range(1, 151))


@pytest.mark.slow
def test_a_refit_on_two_processes_trains_again_on_the_validation_weeks(tmp_path, run_salesfc):
    """`train --refit on` under DDP: the early-stopped run in selection/ chooses the epoch and the band; the run's
    model is trained again on the training and validation weeks for that epoch count and keeps that band; `infer`
    scores it against a tree peer refitted the same way."""
    import torch

    run_salesfc("prep", "--size", "tiny", "--workdir", str(tmp_path))
    result = run_salesfc("train", "--workdir", str(tmp_path), "--run-id", "again", "--nproc-per-node", "2",
                         "--epochs", "4", "--refit", "on", "--quantiles", "0.1,0.9")
    run = tmp_path / "models" / "again"
    training, chosen = (json.loads((d / "training.json").read_text()) for d in (run, run / "selection"))
    assert training["world_size"] == chosen["world_size"] == 2
    assert training["refit"]["epochs"] == training["best_epoch"] == chosen["best_epoch"]
    assert training["refit"]["rows"]["train"] == chosen["rows"]["train"] + chosen["rows"]["val"]
    assert training["band"] == chosen["band"]
    widen = torch.load(run / "model.pt", weights_only=True)["MODEL_CONFIG"]["band_widen"]
    assert widen == chosen["band"]["widen"]
    assert "refitted on the training and validation weeks" in result.stdout
    run_salesfc("infer", "--workdir", str(tmp_path))
    metrics = json.loads((tmp_path / "reports" / "again" / "metrics.json").read_text())
    assert metrics["model"]["n_rows"] == metrics["baselines"]["gradient_boosted_trees"]["n_rows"] > 0
    peers = [json.loads(p.read_text()) for p in (tmp_path / "baselines").glob("*.json")]
    # The default 13-week model: the one-week peer and the later weeks' peer, both refitted.
    assert len(peers) == 2 and all(peer["refit"] for peer in peers)


def test_backtest_on_kaggle_shaped_files(tmp_path, run_salesfc):
    """`salesfc backtest` on data loaded from Kaggle-shaped CSVs (the real data's code path): four folds, the first
    with Thanksgiving and Christmas, every forecaster scored on the same rows, the files it promises."""
    csvs = tmp_path / "kaggle"
    synthetic.to_kaggle_csvs(synthetic.generate("tiny", seed=2), csvs)
    workdir = tmp_path / "work"
    run_salesfc("prep", "--source", "kaggle", "--kaggle-dir", str(csvs), "--workdir", str(workdir))
    result = run_salesfc("backtest", "--workdir", str(workdir), "--run-id", "bt", "--epochs", "3",
                         "--quantiles", "0.1,0.9")
    out = workdir / "backtests" / "bt"
    summary = json.loads((out / "backtest.json").read_text())
    assert [f["from"] for f in summary["folds"]] == ["2011-11-04", "2012-02-03", "2012-05-04", "2012-08-03"]
    assert summary["folds"][0]["holidays"] == ["Thanksgiving 2011-11-25", "Christmas 2011-12-30"]
    assert summary["data"].startswith("kaggle")
    assert "noise_floor" not in summary["forecasters"]  # real data has no known signal
    for fold in summary["folds"]:
        rows = {m["n_rows"] for m in fold["all_weeks"].values()}
        assert rows == {fold["rows"]} and fold["rows"] > 0
    assert set(summary["mean"]) == {"model", "gradient_boosted_trees", "last_value", "seasonal_naive",
                                    "moving_average_4", "series_mean"}
    for path in ("backtest.md", "backtest.png", "predictions.parquet"):
        assert (out / path).is_file()
    assert "mean WMAE over folds: model $" in result.stdout and "tree peer $" in result.stdout
    # The model's P10-P90 band, scored per fold: coverage in all and in holiday weeks, pinball loss per quantile.
    band = summary["folds"][0]["model_quantiles"]
    assert band["band"] == "p10-p90" and 0 <= band["coverage"] <= 1 and band["coverage_holiday"] is not None
    assert set(band["pinball"]) == {"p10", "p50", "p90"}
    assert "fold 1: p10-p90 band holds" in result.stdout
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert (predictions["model_p10"] <= predictions["model_p90"]).all()
    # The tree peer is fitted once per data version: a second backtest reads its forecasts from the cache.
    again = run_salesfc("backtest", "--workdir", str(workdir), "--run-id", "bt2", "--epochs", "3")
    assert again.stderr.count("tree peer: cached forecasts") == 4
