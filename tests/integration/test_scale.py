"""A chain bigger than the Kaggle data: more stores than a tree's category limit, through every stage."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import one_error_line

from salesfc.data import synthetic

pytestmark = pytest.mark.slow

STORES = 300  # past the 255 categories scikit-learn's trees take, and past any 8-bit code


def test_more_than_255_stores_through_prep_train_infer_and_the_report(tmp_path, run_salesfc):
    raw = synthetic.generate("tiny", seed=4, stores=STORES)
    # Two departments keep it small (~85K rows): the store count is what is under test.
    raw.sales = raw.sales[raw.sales["dept"].isin([2, 7])].reset_index(drop=True)
    csvs = tmp_path / "kaggle"
    synthetic.to_kaggle_csvs(raw, csvs)
    workdir = tmp_path / "work"
    run_salesfc("prep", "--source", "kaggle", "--kaggle-dir", str(csvs), "--workdir", str(workdir))
    run_salesfc("train", "--workdir", str(workdir), "--run-id", "chain", "--epochs", "2", "--members", "1")
    result = run_salesfc("infer", "--workdir", str(workdir))

    report = workdir / "reports" / "chain"
    metrics = json.loads((report / "metrics.json").read_text())
    forecast = pd.read_parquet(report / "predictions.parquet")
    # Every store with a series still reporting at the end of the data (a few series end early).
    assert forecast["store"].nunique() > 290 and forecast["predicted_sales"].notna().all()
    assert metrics["baselines"]["gradient_boosted_trees"]["wmae"] > 0
    # Every store has its own embedding row (plus the one for stores unseen in training).
    params = json.loads((workdir / "models" / "chain" / "preprocess.json").read_text())
    stores = next(c for c in params["categories"] if c["name"] == "store")
    assert len(stores["values"]) == STORES
    for plot in ("forecast_vs_actual.png", "error_by_week.png"):
        assert (report / plot).stat().st_size > 10_000
    assert "gradient_boosted_trees" in result.stdout


def test_stores_is_for_synthetic_data_only(tmp_path, run_salesfc):
    csvs = tmp_path / "kaggle"
    synthetic.to_kaggle_csvs(synthetic.generate("tiny", seed=4), csvs)
    bad = run_salesfc("prep", "--source", "kaggle", "--kaggle-dir", str(csvs), "--stores", "90",
                      "--workdir", str(tmp_path / "work"), check=False)
    assert bad.returncode == 1
    assert "--stores (SALESFC_STORES) sizes synthetic data only" in one_error_line(bad.stderr)
    too_many = run_salesfc("prep", "--stores", "0", "--workdir", str(tmp_path / "work"), check=False)
    assert too_many.returncode == 2 and "--stores" in too_many.stderr and "from 1 to 20,000" in too_many.stderr
