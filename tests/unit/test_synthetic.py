"""The synthetic generator: Walmart-shaped, deterministic, with the real data's mess and a known signal."""

import numpy as np
import pandas as pd
import pytest

from salesfc.data import HOLIDAY_DATES, MARKDOWNS, synthetic


@pytest.fixture(scope="module")
def full():
    return synthetic.generate("full", seed=7)


def test_full_size_has_the_real_data_shape(full):
    sales = full.sales
    series = sales.groupby(["store", "dept"]).size()
    assert 380_000 <= len(sales) <= 460_000
    assert sales["store"].nunique() == 45 and sales["dept"].nunique() == 81
    assert sales["dept"].max() <= 99
    assert sales["date"].nunique() == 143
    assert sales["date"].min() == pd.Timestamp("2010-02-05") and sales["date"].max() == pd.Timestamp("2012-10-26")
    assert 3_000 <= len(series) <= 3_500
    # Not every series covers every week: lags must count calendar weeks.
    assert 0.7 < (series == 143).mean() < 0.9
    # Not every store carries every department.
    assert sales.groupby("store")["dept"].nunique().max() < 81


def test_full_size_has_the_real_data_mess(full):
    sales, external = full.sales, full.external
    assert 500 < (sales["weekly_sales"] < 0).sum() < 3_000          # returns
    assert (sales["weekly_sales"] == 0).sum() > 20
    before = external["date"] < pd.Timestamp("2011-11-11")
    assert external.loc[before, MARKDOWNS].isna().all().all()
    assert external.loc[~before, MARKDOWNS].notna().any().all()
    assert (external[MARKDOWNS] < 0).sum().sum() > 0
    # The store context reaches past the sales: what is known about next week.
    assert external["date"].max() > sales["date"].max()


def test_holidays_are_the_kaggle_weeks(full):
    flagged = set(full.sales.loc[full.sales["is_holiday"], "date"].unique())
    assert flagged == {d for d in HOLIDAY_DATES if d <= pd.Timestamp("2012-10-26")}
    assert len(flagged) == 10


def test_holidays_and_markdowns_have_real_effects(full):
    sales = full.sales
    signal = sales.groupby("date")["expected_sales"].sum()
    assert signal[pd.Timestamp("2011-11-25")] > 1.15 * signal[pd.Timestamp("2011-11-18")]   # Black Friday
    assert signal[pd.Timestamp("2011-12-23")] > 1.15 * signal[pd.Timestamp("2011-12-02")]   # Christmas rush


def test_the_signal_is_the_median_of_the_reported_sales(full):
    sales = full.sales
    big = sales[sales["expected_sales"] > 5_000]
    ratio = big["weekly_sales"] / big["expected_sales"]
    assert abs(ratio.median() - 1) < 0.005
    assert 0.03 < (ratio - 1).abs().mean() < 0.2


def test_deterministic_and_sizes_share_parameters():
    a, b = synthetic.generate("tiny", seed=3), synthetic.generate("tiny", seed=3)
    pd.testing.assert_frame_equal(a.sales, b.sales)
    assert not synthetic.generate("tiny", seed=4).sales["weekly_sales"].equals(a.sales["weekly_sales"])
    small = synthetic.generate("small", seed=3).sales
    merged = a.sales.merge(small, on=["store", "dept", "date"], suffixes=("", "_small"))
    assert len(merged) > 0.5 * len(a.sales)
    np.testing.assert_allclose(merged["expected_sales"], merged["expected_sales_small"])


def test_tiny_is_small_and_varied():
    tiny = synthetic.generate("tiny")
    assert 3_000 < len(tiny.sales) < 10_000
    assert set(tiny.stores["type"]) == {"A", "B", "C"}


def test_a_chain_of_many_stores_keeps_the_first_45_and_draws_new_ones():
    default = synthetic.generate("tiny", seed=5)
    chain = synthetic.generate("tiny", seed=5, stores=300)
    assert sorted(chain.stores["store"]) == list(range(1, 301))
    assert set(chain.sales["store"]) == set(range(1, 301)) and set(chain.external["store"]) == set(range(1, 301))
    assert not chain.stores["store"].duplicated().any()
    # The default data is the chain's beginning, unchanged.
    pd.testing.assert_frame_equal(chain.sales[chain.sales["store"] <= 4].reset_index(drop=True), default.sales)
    # Later blocks are new stores from the same distributions: other sizes, every type, sales of the same order.
    block_1 = chain.stores[chain.stores["store"].between(46, 90)]
    assert not np.allclose(block_1["size"].to_numpy(), chain.stores["size"].to_numpy()[:45])
    assert set(block_1["type"]) == {"A", "B", "C"}
    per_store = chain.sales.groupby("store")["weekly_sales"].sum()
    assert 0.3 < per_store.loc[46:].median() / per_store.loc[:45].median() < 3
    assert chain.source == "synthetic:tiny:5:300" and default.source == "synthetic:tiny:5"
    assert synthetic.generate("tiny", seed=5, stores=3).stores["store"].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="stores must be between 1 and"):
        synthetic.generate("tiny", stores=0)


def test_markdown_lift_is_what_the_markdowns_add_to_the_signal(monkeypatch):
    # Two blocks of stores (each drawn from a seed of its own), weeks with and without markdowns.
    raw = synthetic.generate("tiny", seed=5, stores=50)
    lift = synthetic.markdown_lift(raw, 5, raw.sales)
    draw = synthetic._dept_params
    monkeypatch.setattr(synthetic, "_dept_params", lambda rng: {**draw(rng), "markdown": np.zeros(len(synthetic.DEPTS))})
    without = synthetic.generate("tiny", seed=5, stores=50).sales
    pd.testing.assert_frame_equal(without[["store", "dept", "date"]], raw.sales[["store", "dept", "date"]])
    np.testing.assert_allclose(raw.sales["expected_sales"] / lift, without["expected_sales"], rtol=1e-6, atol=1e-3)
    markdown_weeks = raw.sales["date"] >= pd.Timestamp("2011-11-11")
    assert (lift[~markdown_weeks.to_numpy()] == 1).all()
    assert (lift[markdown_weeks.to_numpy()] > 1.001).mean() > 0.5
    assert set(raw.sales.loc[markdown_weeks & (lift > 1.001), "store"]) >= {1, 46}
