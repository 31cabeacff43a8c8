"""The rolling-origin backtest: its folds, and that a fold's weeks never reach training or model selection."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from salesfc import backtest, baselines, distributed, features, settings
from salesfc.data import synthetic
from salesfc.dataset import Preprocessor
from salesfc.errors import UserError
from salesfc.tables import TIMESTAMP


def feature_frame(raw) -> pd.DataFrame:
    """What the feature store returns for training, joined in pandas: labels with their point-in-time features."""
    engineered = features.engineer(raw)
    frame = engineered.labels.merge(engineered.sales_history, on=["store_dept", "store", "dept", TIMESTAMP])
    return frame.merge(engineered.store_context, on=["store", TIMESTAMP]).sort_values(
        [TIMESTAMP, "store_dept"], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def frame():
    return feature_frame(synthetic.generate("tiny", seed=3))


def test_default_folds_are_the_last_year_with_thanksgiving_and_christmas_in_the_first(frame):
    folds = backtest.make_folds(frame[TIMESTAMP], folds=4, fold_weeks=13, val_weeks=13)
    assert [f"{f.cutoff:%Y-%m-%d}" for f in folds] == ["2011-11-04", "2012-02-03", "2012-05-04", "2012-08-03"]
    assert f"{folds[-1].last_week:%Y-%m-%d}" == "2012-10-26"
    first = frame[(frame[TIMESTAMP] >= folds[0].cutoff) & (frame[TIMESTAMP] <= folds[0].last_week)]
    from salesfc.infer import holiday_weeks

    assert holiday_weeks(first[TIMESTAMP]) == ["Thanksgiving 2011-11-25", "Christmas 2011-12-30"]
    for fold in folds:
        split = fold.split()
        weeks = frame[TIMESTAMP][(frame[TIMESTAMP] >= fold.cutoff) & (frame[TIMESTAMP] <= fold.last_week)]
        assert (split.part(weeks) == 2).all()  # every fold week is a test week of its own split
        assert (fold.cutoff - fold.val_start).days == 13 * 7


def test_too_little_data_for_the_folds_is_refused_naming_the_flags(frame):
    with pytest.raises(UserError, match="--folds 12 x --fold-weeks 13"):
        backtest.make_folds(frame[TIMESTAMP], folds=12, fold_weeks=13, val_weeks=13)


def _fit_fold(frame, fold, tmp_path, name, refit="off"):
    config = settings.Config.defaults("backtest", workdir=str(tmp_path / name), epochs=2, device="cpu",
                                      seed=0, refit=refit).for_command("train")
    out = tmp_path / name / "backtests" / "b"
    torch.use_deterministic_algorithms(True)
    table = backtest.run_fold(config, distributed.setup("cpu"), fold, frame, "data", True, out)
    run = out / fold.name
    state = torch.load(run / "model.pt", weights_only=True)["MODEL_STATE"]
    # What the search chose and saw (its timings aside).
    peer = [[{k: v for k, v in trial.items() if k != "seconds"} for trial in json.loads(p.read_text())["trials"]]
            for p in (tmp_path / name / "baselines").glob("*.json")]
    return table, json.loads((run / "preprocess.json").read_text()), state, peer


def config_horizon(tmp_path) -> int:
    trained = json.loads(next((tmp_path / "base" / "backtests" / "b").glob("*/training.json")).read_text())
    return trained["model_config"]["horizon"]


def _perturb(frame, since) -> pd.DataFrame:
    """Every sale and every number from ``since`` on replaced by something else."""
    changed = frame.copy()
    later = changed[TIMESTAMP] >= since
    numeric = [c for c in changed.columns if c not in ("store_dept", "store", "dept", TIMESTAMP, "is_holiday")
               and pd.api.types.is_float_dtype(changed[c])]
    changed.loc[later, numeric] = changed.loc[later, numeric] * 3.0 + 777.0
    return changed


@pytest.mark.parametrize("refit", ["off", "on"])
def test_a_folds_weeks_never_reach_training_or_selection(frame, tmp_path, refit):
    """Change every number from the fold's first week on: the fitted network, its preprocessing, its chosen epoch
    and the tree peer's search come out identical, refitted on the validation weeks or not. Changing the weeks
    before it (the last training weeks and the validation weeks) changes them: the test can fail."""
    fold = backtest.make_folds(frame[TIMESTAMP], folds=2, fold_weeks=13, val_weeks=13)[0]
    table, params, state, peer = _fit_fold(frame, fold, tmp_path, "base", refit)
    _, params_after, state_after, peer_after = _fit_fold(_perturb(frame, fold.cutoff), fold, tmp_path, "later", refit)
    assert params == params_after and params["refit"] == (refit == "on")
    assert all(torch.equal(state[k], state_after[k]) for k in state)
    if refit == "on":  # the model is the refit, as many epochs as the early-stopped run chose, on its weeks and more
        run = tmp_path / "base" / "backtests" / "b" / fold.name
        trained, chosen = (json.loads((d / "training.json").read_text()) for d in (run, run / "selection"))
        assert trained["refit"]["epochs"] == trained["best_epoch"] == chosen["best_epoch"]
        assert trained["refit"]["rows"]["train"] == chosen["rows"]["train"] + chosen["rows"]["val"]
    # The default 13-week network: the one-week peer's search and the later weeks' peer's, both blind to the fold.
    assert config_horizon(tmp_path) == 13 and peer == peer_after and len(peer) == 2
    assert set(table["week"]) == set(frame.loc[(frame[TIMESTAMP] >= fold.cutoff)
                                               & (frame[TIMESTAMP] <= fold.last_week), TIMESTAMP])
    earlier = fold.val_start - pd.Timedelta(weeks=4)
    _, params_before, state_before, peer_before = _fit_fold(_perturb(frame, earlier), fold, tmp_path, "before", refit)
    assert params != params_before and peer != peer_before
    assert not all(torch.equal(state[k], state_before[k]) for k in state)


def test_the_tree_peers_cache_is_used_and_invalidated_when_the_data_changes(frame, tmp_path):
    split = backtest.make_folds(frame[TIMESTAMP], folds=1, fold_weeks=13, val_weeks=13)[0].split()
    part = split.part(frame[TIMESTAMP])
    train, val, rows = frame[part == 0], frame[part == 1], frame[part == 2]
    pre = Preprocessor.fit(train)
    args = dict(cache=tmp_path, split=split.to_json())
    first = baselines.tree_peer(pre, train, val, rows, data="v1", **args)
    again = baselines.tree_peer(pre, train, val, rows, data="v1", **args)
    assert not first["cached"] and again["cached"]
    np.testing.assert_allclose(first["forecast"], again["forecast"])
    # New data (prep writes a new fingerprint): fitted again, not read from the cache.
    assert not baselines.tree_peer(pre, train, val, rows, data="v2", **args)["cached"]
    # Same fingerprint but other preprocessing (other training weeks, other features): fitted again.
    other = Preprocessor.fit(train[train[TIMESTAMP] > train[TIMESTAMP].min()])
    assert not baselines.tree_peer(other, train, val, rows, data="v1", **args)["cached"]
    # Other rows asked for: fitted again rather than returning forecasts of the wrong rows.
    assert not baselines.tree_peer(pre, train, val, rows.iloc[:-5], data="v1", **args)["cached"]
