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

    horizon = 1

    def __init__(self):
        self.rows = None

    def predict_quantiles(self, frame, week=None, widen=None, level=1.0):
        self.rows = frame
        return {0.5: np.full((len(frame), self.horizon), 100.0 * level)}


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


def test_forecasts_in_slices_are_the_forecasts_of_all_rows_at_once(tmp_path, monkeypatch):
    """The network sees the rows a slice at a time (memory), which must not change a forecast or its order."""
    from salesfc import features, model as model_lib
    from salesfc.data import synthetic
    from salesfc.dataset import Preprocessor, Split
    from salesfc.tables import TIMESTAMP

    engineered = features.engineer(synthetic.generate("tiny", seed=2))
    frame = engineered.labels.merge(engineered.sales_history, on=["store_dept", "store", "dept", TIMESTAMP])
    frame = frame.merge(engineered.store_context, on=["store", TIMESTAMP])
    split = Split.from_weeks(frame[TIMESTAMP], val_weeks=13, test_weeks=26)
    pre = Preprocessor.fit(frame[split.part(frame[TIMESTAMP]) == 0])
    config = model_lib.model_config(pre.n_numeric, pre.cardinalities, 4, [16], 0.0, members=2,
                                    quantiles=(0.1, 0.5, 0.9))
    model_lib.save(tmp_path / "model.pt", {"MODEL_STATE": model_lib.build(config).state_dict(), "MODEL_CONFIG": config})
    write_json(tmp_path / "preprocess.json", {**pre.params, "split": split.to_json(), "data": "d"})
    forecaster = infer.Forecaster(tmp_path)
    whole = forecaster.predict_quantiles(frame)
    monkeypatch.setattr(infer, "PREDICT_ROWS", 1_000)  # the frame's 5,785 rows in 6 slices, the last one short
    sliced = forecaster.predict_quantiles(frame)
    assert list(sliced) == [0.1, 0.5, 0.9] and len(frame) > 5 * infer.PREDICT_ROWS
    for q in whole:
        np.testing.assert_allclose(sliced[q], whole[q], rtol=1e-5, atol=1e-3)
    assert forecaster.predict_quantiles(frame.iloc[:0])[0.5].shape == (0, 1)
