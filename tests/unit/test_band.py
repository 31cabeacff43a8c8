"""The quantile band widened by the latest weeks' errors: what a forecast may know, and how wide it gets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from salesfc import band, infer
from salesfc.tables import TIMESTAMP, epoch_days
from salesfc.workspace import write_json

WEEK = band.DAYS_PER_WEEK


def test_a_forecast_is_widened_by_the_scores_of_its_latest_known_weeks_only():
    days = np.repeat(np.arange(10) * WEEK, 10)       # 10 weeks, 10 scores each
    scores = np.tile(np.linspace(-1, 1, 10), 10) + days / WEEK  # later weeks score higher
    until = np.array([3 * WEEK, 9 * WEEK, -WEEK])
    widen = band.recent_widening(days, scores, until, nominal=0.8, fallback=0.5, weeks=2)
    for value, last in zip(widen[:2], (3, 9)):
        window = scores[(days <= last * WEEK) & (days > (last - 2) * WEEK)]
        assert value == pytest.approx(np.quantile(window, band.conformal_level(len(window), 0.8)))
        assert np.mean(window <= value) >= 0.8
    assert widen[2] == 0.5  # nothing known yet: the validation weeks' widening


def test_it_only_widens():
    widen = band.recent_widening(np.zeros(5), -np.ones(5), np.array([0]), nominal=0.8, fallback=0.3)
    assert widen[0] == 0.0


@pytest.fixture(scope="module")
def forecaster_and_frame(tmp_path_factory):
    from salesfc import features, model as model_lib
    from salesfc.data import synthetic
    from salesfc.dataset import Preprocessor, Split
    from salesfc.train import set_band

    torch.manual_seed(0)
    engineered = features.engineer(synthetic.generate("tiny", seed=2))
    frame = engineered.labels.merge(engineered.sales_history, on=["store_dept", "store", "dept", TIMESTAMP])
    frame = frame.merge(engineered.store_context, on=["store", TIMESTAMP])
    split = Split.from_weeks(frame[TIMESTAMP], val_weeks=13, test_weeks=26)
    pre = Preprocessor.fit(frame[split.part(frame[TIMESTAMP]) == 0])
    config = model_lib.model_config(pre.n_numeric, pre.cardinalities, 4, [16], 0.0, quantiles=(0.1, 0.5, 0.9),
                                    horizon=3)
    path = tmp_path_factory.mktemp("run") / "model.pt"
    model_lib.save(path, {"MODEL_STATE": model_lib.build(config).state_dict(), "MODEL_CONFIG": config})
    set_band(path, [0.05, 0.06, 0.07])
    write_json(path.parent / "preprocess.json", {**pre.params, "split": split.to_json(), "data": "d"})
    return infer.Forecaster(path.parent), frame, split


def recent(forecaster, frame, split) -> pd.DataFrame:
    """The origins forecast_weeks needs for the held-out weeks."""
    return frame[frame[TIMESTAMP] >= infer.recent_origins(forecaster, split.test_start)].reset_index(drop=True)


def test_no_band_uses_an_actual_it_could_not_have_known(forecaster_and_frame):
    """Perturbation: the actuals of one held-out week made enormous change no forecast made before that week, and
    change the band (not the median) of forecasts made after it."""
    forecaster, frame, split = forecaster_and_frame
    origins = recent(forecaster, frame, split)
    rows, bands, at, _ = infer.forecast_weeks(forecaster, origins, split.test_start, split.last_week)
    week = split.test_start + pd.Timedelta(weeks=6)
    changed = origins.assign(weekly_sales=np.where(origins[TIMESTAMP] == week, origins["weekly_sales"] * 50,
                                                   origins["weekly_sales"]))
    again, bands_again, at_again, _ = infer.forecast_weeks(forecaster, changed, split.test_start, split.last_week)
    np.testing.assert_array_equal(at, at_again)
    made = np.maximum(epoch_days(origins[TIMESTAMP])[at], epoch_days([split.test_start])[0])
    before = made <= epoch_days([week])[0]  # made when that week's actuals were not known yet
    assert before.any() and (~before).any()
    for q in (0.1, 0.9):
        np.testing.assert_array_equal(bands[q][before], bands_again[q][before])
    # P90 goes up (P10 may stay at the floor of a series that never sold a negative amount)
    assert (bands_again[0.9][~before] > bands[0.9][~before] + 1).any()
    np.testing.assert_array_equal(bands[0.5], bands_again[0.5])


def test_the_first_weeks_are_widened_by_validation_weeks_and_the_next_forecast_by_the_last(forecaster_and_frame):
    forecaster, frame, split = forecaster_and_frame
    origins = recent(forecaster, frame, split)
    rows, bands, at, after = infer.forecast_weeks(forecaster, origins, split.test_start, split.last_week)
    static = forecaster.predict_quantiles(origins)
    assert len(after) == 3 and all(w >= 0 for w in after)
    # Not the model's own widening: weeks the model never saw set it.
    first = (rows[TIMESTAMP] == split.test_start).to_numpy() & (rows["horizon"] == 1).to_numpy()
    assert not np.allclose(bands[0.9][first], static[0.9][at[first], 0])
    # Forecasts after the data: the latest held-out weeks' scores at each horizon.
    assert after != forecaster.network.band_widen and np.all(np.isfinite(after))


def test_weeks_the_model_was_trained_on_do_not_set_the_band(forecaster_and_frame, monkeypatch):
    """Even with a window reaching back into the training weeks, their (too small) errors are not used."""
    forecaster, frame, split = forecaster_and_frame
    monkeypatch.setattr(band, "RECENT_WEEKS", 20)  # 13 validation weeks, then training weeks
    frame = recent(forecaster, frame, split)
    _, bands, _, _ = infer.forecast_weeks(forecaster, frame, split.test_start, split.last_week)
    trained = frame[TIMESTAMP] < split.val_start
    assert trained.any()
    changed = frame.assign(weekly_sales=np.where(trained, frame["weekly_sales"] * 50, frame["weekly_sales"]))
    _, bands_again, _, _ = infer.forecast_weeks(forecaster, changed, split.test_start, split.last_week)
    for q in bands:
        np.testing.assert_array_equal(bands[q], bands_again[q])
