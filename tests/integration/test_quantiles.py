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
    run_salesfc("train", "--workdir", workdir, "--run-id", "bands", "--epochs", "8", "--quantiles", "0.9,0.1")
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
    assert training["band"]["validation_coverage_after"] >= 0.8 and training["band"]["widen"] >= 0


def test_quantiles_must_lie_between_0_and_1(tmp_path, run_salesfc):
    bad = run_salesfc("train", "--workdir", str(tmp_path), "--quantiles", "0.1,1.5", check=False)
    assert bad.returncode == 2
    assert "--quantiles" in bad.stderr and "strictly between 0 and 1" in bad.stderr
