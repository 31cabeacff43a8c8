"""Preprocessing: fitted on training rows only, applied the same way everywhere, split by date."""

import json

import numpy as np
import pandas as pd
import pytest

from salesfc import features
from salesfc.data import synthetic
from salesfc.dataset import CATEGORIES, EVENT_WEEKS, SEASON_POOLING, SEASON_PRIOR_ROWS, Preprocessor, Split
from salesfc.errors import UserError
from salesfc.model import calendar_table
from salesfc.tables import TIMESTAMP, Columns, epoch_days


@pytest.fixture(scope="module")
def frame():
    """Engineered rows joined the way Feast joins them (without the on-demand views)."""
    out = features.engineer(synthetic.generate("tiny", seed=2))
    rows = out.labels.merge(out.sales_history.drop(columns=["store", "dept"]), on=["store_dept", TIMESTAMP])
    return rows.merge(out.store_context, on=["store", TIMESTAMP])


def test_split_is_by_date(frame):
    split = Split.from_weeks(frame[TIMESTAMP], val_weeks=13, test_weeks=26)
    part = split.part(frame[TIMESTAMP])
    weeks = frame[TIMESTAMP]
    assert weeks[part == 0].max() < weeks[part == 1].min()
    assert weeks[part == 1].max() < weeks[part == 2].min()
    assert weeks[part == 2].nunique() == 26 and weeks[part == 1].nunique() == 13
    assert Split.from_json(json.loads(json.dumps(split.to_json()))) == split


def test_fit_reads_training_rows_only(frame):
    from salesfc.train import training_arrays

    split = Split.from_weeks(frame[TIMESTAMP], 13, 26)
    part = split.part(frame[TIMESTAMP])
    _, fitted, _ = training_arrays(frame, split)
    # Wreck every validation and test row: what training fits (on the whole frame it is given) cannot move.
    wrecked = frame.copy()
    numeric = wrecked.select_dtypes("number").columns.difference(["store", "dept", "store_dept", "week_of_year"])
    wrecked.loc[part > 0, numeric] = wrecked.loc[part > 0, numeric] * 100 + 7
    _, refitted, _ = training_arrays(wrecked, split)
    assert json.dumps(fitted.params, sort_keys=True) == json.dumps(refitted.params, sort_keys=True)
    # ... while the same wreck of training rows does move it: the comparison above can fail.
    wrecked_train = frame.copy()
    wrecked_train.loc[part == 0, numeric] = wrecked_train.loc[part == 0, numeric] * 100 + 7
    _, moved, _ = training_arrays(wrecked_train, split)
    assert json.dumps(fitted.params, sort_keys=True) != json.dumps(moved.params, sort_keys=True)


def test_a_fitted_input_missing_at_inference_is_an_error_naming_it(frame):
    pre = Preprocessor.fit(frame)
    column = pre.params["inputs"][0]["column"]
    with pytest.raises(UserError, match=f"trained with column\\(s\\) {column}, which the .* rows to forecast do not "
                       "have.*salesfc prep"):
        pre.transform(frame.drop(columns=column))
    # A column the model never used may go: the forecast does not read it.
    unused = next(c for c in frame.columns if c not in pre.required_columns() and c != "weekly_sales")
    assert pre.transform(frame.drop(columns=unused)).numeric.shape == (len(frame), pre.n_numeric)


def test_transform_is_deterministic_and_survives_json(frame):
    pre = Preprocessor.fit(frame.iloc[:3000])
    again = Preprocessor(json.loads(json.dumps(pre.params)))
    a, b = pre.transform(frame), again.transform(frame)
    np.testing.assert_array_equal(a.numeric, b.numeric)
    np.testing.assert_array_equal(a.categories, b.categories)
    assert a.numeric.shape == (len(frame), pre.n_numeric) and np.isfinite(a.numeric).all()
    assert a.categories.shape == (len(frame), len(CATEGORIES))
    # The target times the scale gives the dollars back.
    np.testing.assert_allclose(a.target * a.scale, frame["weekly_sales"], rtol=1e-5, atol=1e-3)


def test_columns_as_online_reads_give_them_transform_the_same_as_a_frame(frame):
    """A served forecast's rows come as Columns of the lists Feast answers (None where a value is missing), not a
    DataFrame: the same numbers, missing values, categories, scale, target and floor as the frame gives."""
    pre = Preprocessor.fit(frame.iloc[:3000])
    rows = frame.iloc[3000:3400].reset_index(drop=True).copy()
    rows.loc[::7, "sales_lag_1"] = np.nan  # missing values, as None in Feast's lists
    rows.loc[::5, "store_type"] = None
    online = Columns({name: np.asarray([None if isinstance(v, float) and np.isnan(v) else v
                                        for v in rows[name].tolist()]) for name in rows.columns})
    a, b = pre.transform(rows), pre.transform(online)
    np.testing.assert_array_equal(a.numeric, b.numeric)
    np.testing.assert_array_equal(a.categories, b.categories)
    np.testing.assert_array_equal(a.scale, b.scale)
    np.testing.assert_array_equal(a.target, b.target)
    forecast = np.linspace(-5, 5, len(rows))
    np.testing.assert_array_equal(pre.floor(rows, forecast), pre.floor(online, forecast))
    kept = np.arange(len(rows)) % 3 == 0
    np.testing.assert_array_equal(pre.transform(online.rows(kept)).numeric, a.numeric[kept])


def test_a_one_week_scale_carries_the_department_profile_and_the_inputs_do_not(frame):
    seasonal = Preprocessor.fit(frame)
    # A model fitted before profiles existed (no "season" in its parameters): the level alone.
    old = json.loads(json.dumps(seasonal.params))
    old["scale"].pop("season")
    plain = Preprocessor(old)
    level = seasonal.level(frame)
    np.testing.assert_array_equal(plain.scale(frame), level)
    # The profile by hand: a department's sales over their levels in each week of year, pooled with the weeks beside
    # it unless either is a holiday's, shrunk towards 1.
    against = frame["sales_rolling_mean_52"].notna().to_numpy()
    rows = frame[against].assign(level=level[against])
    cells = rows.groupby(["dept", "week_of_year"]).agg(sales=("weekly_sales", "sum"), level=("level", "sum"),
                                                       n=("level", "size"))
    pooled = {}
    for (dept, week) in {(d, w) for d in frame["dept"].unique() for w in range(1, 54)}:
        if week in EVENT_WEEKS:
            near = {week: 1.0}
        else:
            near = {(week + k - 1) % 53 + 1: weight for k, weight in zip((-1, 0, 1), SEASON_POOLING)}
            near = {w: weight for w, weight in near.items() if w not in EVENT_WEEKS}
        parts = [cells.loc[(dept, w)] * weight for w, weight in near.items() if (dept, w) in cells.index]
        if parts:
            pooled[(dept, week)] = sum(parts)
    cells = pd.DataFrame(pooled).T.rename_axis(["dept", "week_of_year"])
    expected = ((cells["n"] * cells["sales"] / cells["level"] + SEASON_PRIOR_ROWS) / (cells["n"] + SEASON_PRIOR_ROWS)
                ).clip(0.2, 5.0)
    profile = frame.join(expected.rename("profile"), on=["dept", "week_of_year"])["profile"].to_numpy()
    assert against.sum() > 1000 and (~against).sum() > 1000  # both kinds of rows are there
    assert np.nanmax(np.abs(profile - 1)) > 0.2  # a profile with a season in it
    np.testing.assert_allclose(seasonal.scale(frame), np.where(against, level * profile, level), rtol=1e-5)
    a, b = seasonal.transform(frame), plain.transform(frame)
    # The inputs are the series' level-relative values either way; only target, weight and scale move.
    np.testing.assert_allclose(a.numeric, b.numeric, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.target * a.scale, frame["weekly_sales"], rtol=1e-5, atol=1e-3)
    # A later week's profile is that of its week of year, computed from its date as the store context computes it.
    week_of_year = calendar_table()[0].numpy()
    days = epoch_days(frame[TIMESTAMP])
    np.testing.assert_array_equal(week_of_year[days], frame["week_of_year"].to_numpy())
    three_weeks_on = frame.assign(week_of_year=week_of_year[days + 21])
    np.testing.assert_allclose(seasonal.scale(frame, days, 3), seasonal.scale(three_weeks_on), rtol=1e-12)
    assert not np.allclose(seasonal.scale(frame, days, 3), seasonal.scale(frame))
    # A department not seen in training gets no profile.
    unseen = frame.iloc[:50].assign(dept=999)
    np.testing.assert_allclose(seasonal.scale(unseen), plain.scale(unseen))
    # Saved and loaded as JSON it scales the same.
    again = Preprocessor(json.loads(json.dumps(seasonal.params)))
    np.testing.assert_array_equal(again.scale(frame), seasonal.scale(frame))


def test_unseen_categories_get_code_zero(frame):
    pre = Preprocessor.fit(frame[frame["store"] != 4])
    batch = pre.transform(frame[frame["store"] == 4])
    assert (batch.categories[:, CATEGORIES.index("store")] == 0).all()


def test_rows_without_history_get_a_department_scale(frame):
    pre = Preprocessor.fit(frame)
    first = frame[frame["weeks_of_history"] == 0]
    assert len(first) > 0
    scale = pre.scale(first)
    assert np.isfinite(scale).all() and (scale >= 10).all()


def test_holiday_weeks_weigh_five_times(frame):
    pre = Preprocessor.fit(frame)
    batch = pre.transform(frame)
    ratio = batch.weight / batch.scale
    holiday = frame["is_holiday"].to_numpy() > 0
    assert ratio[holiday].mean() == pytest.approx(5 * ratio[~holiday].mean(), rel=1e-5)
    assert batch.weight.mean() == pytest.approx(1.0, rel=1e-5)


def test_lookup_gives_what_a_dict_gives_row_by_row():
    from salesfc.dataset import Lookup

    rng = np.random.default_rng(3)
    mapping = {int(k): float(v) for k, v in zip(rng.choice(200, 40, replace=False), rng.normal(size=40))}
    wanted = rng.integers(-5, 210, 1000)
    assert np.array_equal(Lookup(mapping)(wanted, np.nan), [mapping.get(int(w), np.nan) for w in wanted],
                          equal_nan=True)
    codes = {"C": 1, "A": 2, "B": 3}
    letters = np.array(["A", "B", "C", "nan", "AB", ""], dtype=object)
    assert Lookup(codes)(letters, 0).tolist() == [2, 3, 1, 0, 0, 0]
    assert Lookup({})(np.array([1, 2]), 0).tolist() == [0, 0]


def test_ahead_finds_each_series_own_later_weeks_and_nothing_else(frame):
    from salesfc.dataset import Ahead

    # Drop some weeks: a gap must read as not reported, never as the next row of the series.
    gappy = frame.drop(index=frame.index[::7]).reset_index(drop=True)
    ahead = Ahead.of(gappy, 4)
    sales = gappy.set_index(["store_dept", TIMESTAMP])["weekly_sales"]
    rng = np.random.default_rng(0)
    for i in rng.choice(len(gappy), 300, replace=False):
        for h in range(4):
            key = (gappy["store_dept"].iloc[i], gappy[TIMESTAMP].iloc[i] + np.timedelta64(7 * h, "D"))
            assert ahead.found[i, h] == (key in sales.index)
            if ahead.found[i, h]:
                assert ahead.sales[i, h] == sales[key]
            else:
                assert np.isnan(ahead.sales[i, h]) and ahead.holiday[i, h] == 0
    assert ahead.found[:, 0].all()  # horizon 1 is the row itself
    np.testing.assert_array_equal(ahead.sales[:, 0], gappy["weekly_sales"].to_numpy())


@pytest.mark.parametrize("horizon", [1, 5])
def test_every_horizon_trains_on_training_weeks_and_validates_on_validation_weeks(frame, horizon):
    """The leakage test of the targets: at every horizon, a training target is a week before the validation weeks
    and a validation target one of them (from origins up to horizon - 1 weeks earlier), each the sales of its own
    series that many weeks after the origin; nothing from the test weeks is a target."""
    from salesfc.tables import epoch_days
    from salesfc.train import training_arrays

    split = Split.from_weeks(frame[TIMESTAMP], 13, 26)
    known = frame[frame[TIMESTAMP] < split.test_start].reset_index(drop=True)
    arrays, pre, _ = training_arrays(known, split, horizon=horizon)
    sales = {(k, d): s for k, d, s in zip(known["store_dept"], epoch_days(known[TIMESTAMP]), known["weekly_sales"])}
    val_day, test_day = epoch_days([split.val_start, split.test_start])
    for name, low, high in (("train", -np.inf, val_day), ("val", val_day, test_day)):
        days, weight = arrays[f"{name}_days"], arrays[f"{name}_weight"]
        assert weight.shape == (len(days), horizon) and (weight.sum(axis=1) > 0).all()
        target_days = days[:, None] + 7 * np.arange(horizon)
        counted = weight > 0
        assert (target_days[counted] >= low).all() and (target_days[counted] < high).all()
        if name == "train":
            assert (days < val_day).all()
        else:  # validation weeks forecast from every origin that reaches them
            assert days.min() == val_day - 7 * (horizon - 1)
        # Each counted target is its series' sales in that week, over the origin's level and that week's profile.
    rows = known[split.part(known[TIMESTAMP]) == 0]
    keys = rows["store_dept"].to_numpy()
    target, weight = arrays["train_target"], arrays["train_weight"]
    days = arrays["train_days"]
    scales = pre.horizon_scales(rows, days, horizon)
    for i in np.random.default_rng(1).choice(len(rows), 200, replace=False):
        for h in range(horizon):
            if weight[i, h] > 0:
                expected = sales[(keys[i], days[i] + 7 * h)] / scales[i, h]
                assert target[i, h] == pytest.approx(expected, rel=1e-5, abs=1e-6)
            else:
                assert (keys[i], days[i] + 7 * h) not in sales or days[i] + 7 * h >= val_day
