"""infer's refusals: what it says in an empty work directory, and that it never forecasts from stale online rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from salesfc import feature_store, infer, settings
from salesfc.errors import NotReady, UserError
from salesfc.tables import store_dept
from salesfc.workspace import write_json, write_text


def config(tmp_path, **changes):
    return settings.Config.defaults("infer", workdir=str(tmp_path), **changes)


def test_an_empty_work_directory_says_to_run_prep_first(tmp_path):
    with pytest.raises(NotReady, match=r"run `salesfc prep`, then `salesfc train`"):
        infer.resolve_run(config(tmp_path))


def test_prepared_data_without_a_model_says_to_train(tmp_path):
    write_json(config(tmp_path).workspace.manifest, {"fingerprint": "x"})
    with pytest.raises(NotReady) as caught:
        infer.resolve_run(config(tmp_path))
    assert str(caught.value).endswith("(run `salesfc train`)")


def test_a_run_that_has_not_finished_is_not_used(tmp_path):
    workspace = config(tmp_path).workspace
    write_text(workspace.models / "LATEST", "run-1\n")
    with pytest.raises(NotReady, match="training has not finished"):
        infer.resolve_run(config(tmp_path))
    write_json(workspace.run_dir("run-1") / "training.json", {})
    assert infer.resolve_run(config(tmp_path)) == "run-1"


class Recorder:
    """Stands in for the network: records the rows it was asked about."""

    def __init__(self):
        self.rows = None

    def predict_quantiles(self, frame):
        self.rows = frame
        return {0.5: np.full(len(frame), 100.0)}


def online_rows(keys, weeks: list[pd.Timestamp]) -> dict:
    seconds = [int(week.timestamp()) for week in weeks]
    return {"store_dept": list(keys), "sales_lag_1": [1.0] * len(keys), "sales_lag_1__ts": seconds,
            "temperature": [50.0] * len(keys), "temperature__ts": seconds}


@pytest.mark.parametrize("stale_feature", ["sales_lag_1__ts", "temperature__ts"])
def test_next_week_refuses_online_rows_of_an_older_week(monkeypatch, stale_feature):
    week = pd.Timestamp("2012-11-02", tz="UTC")
    keys = [int(store_dept(1, 1)), int(store_dept(1, 2)), int(store_dept(2, 1))]
    rows = online_rows(keys, [week] * 3)
    rows[stale_feature][1] = int((week - pd.Timedelta(weeks=1)).timestamp())  # one series one week behind
    monkeypatch.setattr(feature_store, "online_features", lambda store, keys, timestamps: rows)
    forecaster = Recorder()
    with pytest.raises(UserError, match="does not hold the week of 2012-11-02 for 1 series: run `salesfc prep`"):
        infer.next_week(None, forecaster, {"forecast_series": keys, "next_week": "2012-11-02"})
    assert forecaster.rows is None  # nothing was forecast


def test_next_week_forecasts_every_series_from_current_rows(monkeypatch):
    week = pd.Timestamp("2012-11-02", tz="UTC")
    keys = [int(store_dept(1, 1)), int(store_dept(2, 7))]
    monkeypatch.setattr(feature_store, "online_features", lambda store, keys, timestamps: online_rows(keys, [week] * 2))
    forecaster = Recorder()
    out = infer.next_week(None, forecaster, {"forecast_series": keys, "next_week": "2012-11-02"})
    assert list(zip(out["store"], out["dept"])) == [(1, 1), (2, 7)]
    assert (out["week"] == week).all() and (out["predicted_sales"] == 100.0).all()
    assert not [c for c in forecaster.rows.columns if c.endswith("__ts")]  # timestamps are not features
