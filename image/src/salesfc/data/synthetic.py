"""Synthetic Walmart-shaped sales, with effects that are real and documented, and a known noise floor.

The generator mirrors the Kaggle "Walmart Recruiting - Store Sales Forecasting" data: 45 stores of types A/B/C,
81 department numbers between 1 and 99 (a store carries only some of them), weekly sales for the 143 Fridays from
2010-02-05 to 2012-10-26, and a store context table that reaches 8 weeks further. At full size it makes about
420K sales rows; ``tiny`` and ``small`` take the first stores and a subset of departments with the same per-store
and per-department parameters, so the sizes are comparable.

Expected sales of department d in store s in week t multiply these effects (each one visible to a model through
some feature, so the features matter):

* level: the department's base level x (store size / 150K sq ft)^0.7 x store-type factor x store and series
  idiosyncrasies;
* trend: exp(store growth rate x years since 2010-02-05), growth about +1 %/year +- 4 %;
* seasonality by ISO week of year, one of five department shapes (staples, summer, back-to-school, winter,
  holiday) with a department amplitude;
* holidays: Thanksgiving week (Black Friday) and the two weeks before Christmas lift sales by department-specific
  amounts (up to +150 % for toys and electronics); the Kaggle "Christmas" week (after Christmas Day) dips; Super
  Bowl lifts grocery; Labor Day lifts a little;
* markdowns (promotions, from 2011-11 only, as in the real data): x (1 + mu_d log1p(total markdown / 10,000));
* weather: x (1 + tau_d (temperature - 60 F) / 20), tau_d positive for summer goods, negative for winter goods;
* fuel: x (1 - 0.04 (fuel price - 3.2)); CPI: x (CPI / CPI at start)^0.5; unemployment: x (1 - 0.01 change).

Reported sales = expected x exp(sigma eps) + a eps' (eps, eps' standard normal), with sigma from 5 % (large
staples) to 35 % (small, sparse departments) and a few dollars of additive noise, which makes small departments
report zero or negative sales (returns) now and then, as the real data does. 0.3 % of rows are outliers
(x 0.5 to x 1.8). The expected value is the median of the reported value (both noises are symmetric around it),
so predicting it exactly is the best a model can do on absolute error: that error is the noise floor.

The mess of the real data is reproduced too: series that start late, end early or report only some weeks (so
lags must count calendar weeks), markdowns missing before November 2011 and a few negative ones, CPI and
unemployment missing in some future weeks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from salesfc.data import HOLIDAYS, MARKDOWNS, RawData

FIRST_WEEK = pd.Timestamp("2010-02-05")
N_WEEKS = 143
FUTURE_WEEKS = 8
N_STORES = 45
DEPTS = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
                  28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51,
                  52, 54, 55, 56, 58, 59, 60, 65, 67, 71, 72, 74, 77, 78, 79, 80, 81, 82, 83, 85, 87, 90, 91, 92,
                  93, 94, 95, 96, 97, 98, 99])
SHAPES = ("staples", "summer", "school", "winter", "holiday")
# Departments whose character we fix (the rest are drawn): big grocery, toys, electronics, seasonal, garden...
FIXED_SHAPES = {2: "staples", 92: "staples", 95: "staples", 90: "staples", 38: "staples", 40: "staples",
                7: "holiday", 72: "holiday", 18: "holiday", 5: "holiday", 16: "summer", 3: "school",
                56: "summer", 1: "staples", 13: "staples", 4: "staples", 46: "winter", 26: "winter"}
SPARSE_DEPTS = {39, 43, 45, 47, 51, 77, 78, 65, 99, 19, 28, 60, 54, 43, 96, 37}
# tiny/small keep these departments (varied shapes, a sparse one) so small data still shows every effect.
SUBSET_DEPTS = {"tiny": [1, 2, 3, 7, 16, 18, 38, 46, 72, 92, 95, 45],
                "small": [1, 2, 3, 4, 5, 7, 8, 9, 10, 13, 14, 16, 18, 21, 26, 28, 38, 40, 42, 46, 52, 55, 56, 59,
                          67, 72, 74, 79, 80, 82, 85, 87, 90, 91, 92, 93, 94, 95, 97, 45]}
SIZES = {"tiny": 4, "small": 10, "full": N_STORES}


def weeks(n: int = N_WEEKS + FUTURE_WEEKS) -> pd.DatetimeIndex:
    return pd.date_range(FIRST_WEEK, periods=n, freq="7D")


def _stores(rng: np.random.Generator) -> pd.DataFrame:
    # Kaggle's mix: 22 type A, 17 type B, 6 type C. The first four stores cover all three types (for tiny data).
    types = np.array(["A", "B", "C", "A"] + list(rng.permutation(["A"] * 20 + ["B"] * 16 + ["C"] * 5)))
    size = np.where(types == "A", rng.uniform(150_000, 220_000, N_STORES),
                    np.where(types == "B", rng.uniform(35_000, 140_000, N_STORES), rng.uniform(34_000, 42_000,
                                                                                               N_STORES)))
    return pd.DataFrame({"store": np.arange(1, N_STORES + 1), "type": types, "size": size.round().astype(int)})


def _store_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "growth": rng.normal(0.01, 0.04, N_STORES),
        "effect": rng.lognormal(0, 0.2, N_STORES),
        "climate_mean": rng.uniform(40, 80, N_STORES),
        "climate_amp": rng.uniform(10, 28, N_STORES),
        "cpi_base": np.where(rng.random(N_STORES) < 0.6, rng.uniform(126, 132, N_STORES),
                             rng.uniform(190, 225, N_STORES)),
        "cpi_growth": rng.uniform(0.015, 0.03, N_STORES),
        "unemp_base": rng.uniform(4, 14, N_STORES),
        "unemp_slope": rng.uniform(-1.5, -0.3, N_STORES),
        "fuel_offset": rng.uniform(-0.1, 0.35, N_STORES),
        "markdown_scale": rng.lognormal(0, 0.5, N_STORES),
    }


def _dept_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(DEPTS)
    drawn = rng.choice(SHAPES, n, p=[0.45, 0.15, 0.1, 0.15, 0.15])
    shape = np.array([FIXED_SHAPES.get(int(d), drawn[i]) for i, d in enumerate(DEPTS)])
    sparse = np.isin(DEPTS, list(SPARSE_DEPTS))
    level = np.where(sparse, rng.lognormal(np.log(60), 1.0, n), rng.lognormal(np.log(9_000), 1.0, n))
    level[np.isin(DEPTS, [92, 95, 38, 72, 90, 2, 40])] *= 4  # the real data's giants
    holiday = shape == "holiday"
    return {
        "shape": shape,
        "sparse": sparse,
        "level": level,
        "amplitude": rng.uniform(0.05, 0.35, n),
        "thanksgiving": np.where(holiday, rng.uniform(0.6, 1.5, n), rng.uniform(0.0, 0.25, n)),
        "christmas": np.where(holiday, rng.uniform(0.5, 1.2, n), rng.uniform(0.0, 0.3, n)),
        "super_bowl": np.where(shape == "staples", rng.uniform(0.02, 0.12, n), 0.0),
        "temperature": np.select([shape == "summer", shape == "winter"],
                                 [rng.uniform(0.04, 0.12, n), rng.uniform(-0.12, -0.04, n)],
                                 rng.uniform(-0.02, 0.02, n)),
        "markdown": rng.uniform(0.0, 0.08, n),
        "sigma": np.where(sparse, rng.uniform(0.25, 0.35, n),
                          np.clip(0.16 - 0.025 * np.log10(level / 1_000), 0.05, 0.2) * rng.uniform(0.8, 1.2, n)),
        "carry": np.where(sparse, rng.uniform(0.4, 0.85, n), rng.uniform(0.88, 1.0, n)),
    }


def _seasonality(shape: np.ndarray, amplitude: np.ndarray, week_of_year: np.ndarray) -> np.ndarray:
    """(depts, weeks) multiplier by ISO week of year."""
    w = week_of_year[None, :].astype(float)

    def bump(center: float, width: float) -> np.ndarray:
        distance = np.minimum(np.abs(w - center), 52 - np.abs(w - center))
        return np.exp(-0.5 * (distance / width) ** 2)

    curves = {
        "staples": np.sin(2 * np.pi * (w - 10) / 52) * 0.3,
        "summer": bump(25, 6) - 0.3,
        "school": bump(32, 2.5) - 0.1,
        "winter": bump(50, 5) + 0.5 * bump(2, 3) - 0.3,
        "holiday": bump(49, 3.5) - 0.15,
    }
    profile = np.stack([curves[s][0] for s in shape])
    return 1 + amplitude[:, None] * profile


def _holiday_effects(dept: dict, dates: pd.DatetimeIndex) -> np.ndarray:
    """(depts, weeks) multiplier for Thanksgiving, the weeks before Christmas, Super Bowl and Labor Day."""
    n_dept, n_week = len(dept["shape"]), len(dates)
    effect = np.ones((n_dept, n_week))

    def at(days: list[str]) -> np.ndarray:
        return dates.isin(pd.to_datetime(days))

    effect[:, at(HOLIDAYS["thanksgiving"])] *= 1 + dept["thanksgiving"][:, None]
    effect[:, at(HOLIDAYS["super_bowl"])] *= 1 + dept["super_bowl"][:, None]
    effect[:, at(HOLIDAYS["labor_day"])] *= 1.03
    effect[:, at(HOLIDAYS["christmas"])] *= 1 - 0.25 * dept["christmas"][:, None]
    # The Friday ending the week of Dec 18-24 carries the Christmas rush; the week before, half of it.
    december = np.asarray(dates.month == 12)
    rush = december & (dates.day >= 18) & (dates.day <= 24)
    before = december & (dates.day >= 11) & (dates.day <= 17)
    effect[:, rush] *= 1 + dept["christmas"][:, None]
    effect[:, before] *= 1 + 0.5 * dept["christmas"][:, None]
    return effect


def _external(rng: np.random.Generator, store_params: dict, dates: pd.DatetimeIndex) -> dict[str, np.ndarray]:
    """(stores, weeks) context: weather, fuel, CPI, unemployment, markdowns."""
    n_week = len(dates)
    years = np.asarray((dates - FIRST_WEEK).days / 365.25)
    week_of_year = dates.isocalendar().week.to_numpy().astype(float)
    p = store_params
    temperature = (p["climate_mean"][:, None]
                   - p["climate_amp"][:, None] * np.cos(2 * np.pi * (week_of_year[None, :] - 3) / 52)
                   + rng.normal(0, 5, (N_STORES, n_week)))
    national_fuel = 2.65 + np.cumsum(rng.normal(0.012, 0.035, n_week))
    fuel = national_fuel[None, :] + p["fuel_offset"][:, None] + rng.normal(0, 0.02, (N_STORES, n_week))
    cpi = p["cpi_base"][:, None] * np.exp(p["cpi_growth"][:, None] * years[None, :]) + \
        rng.normal(0, 0.15, (N_STORES, n_week))
    unemployment = p["unemp_base"][:, None] + p["unemp_slope"][:, None] * years[None, :] + \
        np.cumsum(rng.normal(0, 0.05, (N_STORES, n_week)), axis=1)
    unemployment = np.clip(unemployment, 3.0, None)

    markdowns = np.full((5, N_STORES, n_week), np.nan)
    started = np.asarray(dates >= pd.Timestamp("2011-11-11"))
    holiday_weeks = np.asarray(dates.isin(pd.to_datetime(HOLIDAYS["thanksgiving"] + HOLIDAYS["christmas"])))
    medians = [7_000, 3_000, 500, 3_000, 4_500]
    presence = [0.9, 0.6, 0.7, 0.8, 0.95]
    for k in range(5):
        amount = rng.lognormal(np.log(medians[k]), 0.9, (N_STORES, n_week)) * p["markdown_scale"][:, None]
        if k in (1, 2):  # clearance markdowns pile up around the holidays
            amount[:, holiday_weeks] *= 8
        present = started[None, :] & (rng.random((N_STORES, n_week)) < presence[k])
        negative = present & (rng.random((N_STORES, n_week)) < 0.002)
        amount[negative] = -rng.uniform(0.01, 30, negative.sum())
        markdowns[k][present] = amount[present].round(2)
    # Like the real file's last weeks, CPI and unemployment are not known for the last few future weeks.
    cpi[:, -3:] = np.nan
    unemployment[:, -3:] = np.nan
    return {"temperature": temperature.round(2), "fuel_price": fuel.round(3), "cpi": cpi.round(4),
            "unemployment": unemployment.round(3), "markdowns": markdowns}


MAX_STORES = 20_000  # 20,000 x 1,000 departments keeps store_dept keys far inside int64; memory ends sooner


def generate(size: str = "full", seed: int = 7, stores: int | None = None) -> RawData:
    """Generate the three raw tables. Deterministic for (size, seed, stores); sizes share their parameters.

    ``stores`` (default: the size's own count) sets the number of stores, with the size's departments: a chain of
    thousands of stores is made of blocks of 45, block b drawn like the default data from seed (seed, b), so its
    stores are new draws from the same distributions and the first 45 stores are the default data's, unchanged.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}")
    if stores is None:
        return _generate(size, seed)
    if not 1 <= stores <= MAX_STORES:
        raise ValueError(f"stores must be between 1 and {MAX_STORES:,}")
    blocks = []
    for block in range(-(-stores // N_STORES)):
        raw = _generate(size, seed_of_block(seed, block), keep_stores=min(N_STORES, stores - block * N_STORES))
        blocks.append([frame.assign(store=frame["store"] + block * N_STORES)
                       for frame in (raw.sales, raw.external, raw.stores)])
    sales, external, store_table = (pd.concat(parts, ignore_index=True) for parts in zip(*blocks))
    return RawData(sales=sales, external=external, stores=store_table, source=f"synthetic:{size}:{seed}:{stores}")


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block``: a draw of its own, unrelated to any other (seed, block)."""
    return int(np.random.SeedSequence([seed, block]).generate_state(1)[0])


def seed_of_block(seed: int, block: int) -> int:
    """The seed ``generate`` draws block ``block`` of N_STORES stores from: the data seed itself for the first."""
    return seed if block == 0 else block_seed(seed, block)


def _streams(seed: int) -> list[np.random.Generator]:
    """The generator's independent random streams: store, department, context, series, noise, coverage."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]


def promotion(response: np.ndarray, total_markdown: np.ndarray, has_markdown: np.ndarray) -> np.ndarray:
    """The markdowns' lift of expected sales: 1 + the department's response x log1p(the store's week's total markdown /
    10,000), in weeks that have markdowns (arrays broadcast)."""
    return 1 + response * np.log1p(np.clip(total_markdown, 0, None) / 10_000) * has_markdown


def markdown_lift(raw: RawData, seed: int, rows: pd.DataFrame) -> np.ndarray:
    """For each of ``rows`` (store, dept, date) of the data that ``generate(size, seed, ...)`` made (``raw``): the
    factor its store's markdowns of that week lift expected sales by (1 without markdowns). expected_sales over it is
    what a forecaster that knew every effect but the markdowns' would forecast: bench/accuracy.py's markdown-blind
    oracle, since before November 2011 no training week has a markdown to learn the lift from."""
    store = rows["store"].to_numpy(dtype=np.int64)
    amounts = raw.external.set_index(["store", "date"])[list(MARKDOWNS)]
    at = pd.MultiIndex.from_arrays([store, pd.to_datetime(rows["date"]).to_numpy()])
    total = amounts.fillna(0.0).sum(axis=1).reindex(at).fillna(0.0).to_numpy()
    has = amounts.notna().any(axis=1).reindex(at, fill_value=False).to_numpy(dtype=bool)
    block = (store - 1) // N_STORES
    lift = np.ones(len(rows))
    for b in np.unique(block):
        mine = block == b
        dept = _dept_params(_streams(seed_of_block(seed, int(b)))[1])
        response = pd.Series(dept["markdown"], index=DEPTS).reindex(rows["dept"].to_numpy()[mine]).fillna(0.0)
        lift[mine] = promotion(response.to_numpy(), total[mine], has[mine])
    return lift


def _generate(size: str, seed: int, keep_stores: int | None = None) -> RawData:
    rng_store, rng_dept, rng_ext, rng_series, rng_noise, rng_cover = _streams(seed)

    stores = _stores(rng_store)
    store_params = _store_params(rng_store)
    dept = _dept_params(rng_dept)
    all_dates = weeks()
    ext = _external(rng_ext, store_params, all_dates)
    sales_dates = all_dates[:N_WEEKS]
    n_store, n_dept, n_week = N_STORES, len(DEPTS), N_WEEKS

    # Which store carries which department; the draws cover every store and department whatever the size.
    carries = rng_series.random((n_store, n_dept)) < dept["carry"][None, :]
    carries |= ~dept["sparse"][None, :] & (stores["type"].to_numpy()[:, None] == "A")
    series_effect = rng_series.lognormal(0, 0.3, (n_store, n_dept))
    series_sigma = dept["sigma"][None, :] * rng_series.lognormal(0, 0.15, (n_store, n_dept))
    type_factor = stores["type"].map({"A": 1.0, "B": 0.8, "C": 0.6}).to_numpy()
    level = (dept["level"][None, :] * (stores["size"].to_numpy() / 150_000)[:, None] ** 0.7
             * type_factor[:, None] * store_params["effect"][:, None] * series_effect)

    # Coverage: most series report every week; some start late, end early, or (sparse ones) skip weeks.
    pattern = rng_cover.random((n_store, n_dept))
    start = np.where(pattern < 0.06, rng_cover.integers(1, 120, (n_store, n_dept)), 0)
    end = np.where((pattern >= 0.06) & (pattern < 0.1), rng_cover.integers(30, n_week - 1, (n_store, n_dept)),
                   n_week)
    week_index = np.arange(n_week)
    present = (week_index[None, None, :] >= start[:, :, None]) & (week_index[None, None, :] < end[:, :, None])
    sporadic = dept["sparse"][None, :] & (pattern >= 0.1)
    keep_probability = np.where(sporadic, rng_cover.uniform(0.3, 0.95, (n_store, n_dept)), 1.0)
    present &= rng_cover.random((n_store, n_dept, n_week)) < keep_probability[:, :, None]

    years = np.asarray((sales_dates - FIRST_WEEK).days / 365.25)
    week_of_year = sales_dates.isocalendar().week.to_numpy()
    season = _seasonality(dept["shape"], dept["amplitude"], week_of_year)            # (dept, week)
    holiday = _holiday_effects(dept, sales_dates)                                     # (dept, week)
    temperature = ext["temperature"][:, :n_week]
    total_markdown = np.nansum(ext["markdowns"][:, :, :n_week], axis=0)              # (store, week)
    has_markdown = ~np.all(np.isnan(ext["markdowns"][:, :, :n_week]), axis=0)
    cpi = ext["cpi"][:, :n_week]
    unemployment = ext["unemployment"][:, :n_week]
    store_week = (np.exp(store_params["growth"][:, None] * years[None, :])
                  * (1 - 0.04 * (ext["fuel_price"][:, :n_week] - 3.2))
                  * (cpi / cpi[:, :1]) ** 0.5
                  * (1 - 0.01 * (unemployment - unemployment[:, :1])))                # (store, week)
    weather = 1 + dept["temperature"][None, :, None] * np.clip((temperature[:, None, :] - 60) / 20, -2.5, 2.5)
    lift = promotion(dept["markdown"][None, :, None], total_markdown[:, None, :], has_markdown[:, None, :])
    expected = (level[:, :, None] * store_week[:, None, :] * season[None, :, :] * holiday[None, :, :]
                * weather * lift)

    # Keep the requested size: the first stores, and for small sizes a fixed set of departments.
    n_keep = SIZES[size] if keep_stores is None else keep_stores
    dept_keep = np.isin(DEPTS, SUBSET_DEPTS[size]) if size in SUBSET_DEPTS else np.ones(n_dept, bool)
    mask = present & carries[:, :, None]
    mask[n_keep:] = False
    mask[:, ~dept_keep] = False
    s_idx, d_idx, w_idx = np.nonzero(mask)

    exp_values = expected[s_idx, d_idx, w_idx]
    sigma = series_sigma[s_idx, d_idx]
    additive = np.where(dept["sparse"][d_idx], 12.0, 3.0)
    n = len(s_idx)
    # Noise is drawn for every cell of the full grid so a row's noise does not depend on the size asked for.
    eps = rng_noise.standard_normal((n_store, n_dept, n_week))[s_idx, d_idx, w_idx]
    eps_add = rng_noise.standard_normal((n_store, n_dept, n_week))[s_idx, d_idx, w_idx]
    outlier = rng_noise.random((n_store, n_dept, n_week))[s_idx, d_idx, w_idx] < 0.003
    outlier_factor = rng_noise.uniform(0.5, 1.8, (n_store, n_dept, n_week))[s_idx, d_idx, w_idx]
    reported = exp_values * np.exp(sigma * eps) + additive * eps_add
    reported = np.where(outlier, reported * outlier_factor, reported)
    # Some tiny departments report exactly zero (nothing sold, no returns).
    zero = (np.abs(reported) < 1.0) & (rng_noise.random(n) < 0.5)
    reported = np.where(zero, 0.0, reported).round(2)

    sales = pd.DataFrame({
        "store": s_idx + 1,
        "dept": DEPTS[d_idx],
        "date": sales_dates[w_idx],
        "weekly_sales": reported,
        "is_holiday": sales_dates[w_idx].isin(pd.to_datetime(sum(HOLIDAYS.values(), []))),
        "expected_sales": exp_values.round(4),
    })

    kept_stores = np.arange(n_keep)
    grid_store, grid_week = np.meshgrid(kept_stores, np.arange(len(all_dates)), indexing="ij")
    gs, gw = grid_store.ravel(), grid_week.ravel()
    external = pd.DataFrame({
        "store": gs + 1,
        "date": all_dates[gw],
        "temperature": ext["temperature"][gs, gw],
        "fuel_price": ext["fuel_price"][gs, gw],
        **{name: ext["markdowns"][k][gs, gw] for k, name in enumerate(MARKDOWNS)},
        "cpi": ext["cpi"][gs, gw],
        "unemployment": ext["unemployment"][gs, gw],
        "is_holiday": all_dates[gw].isin(pd.to_datetime(sum(HOLIDAYS.values(), []))),
    })
    return RawData(sales=sales, external=external, stores=stores.iloc[:n_keep].reset_index(drop=True),
                   source=f"synthetic:{size}:{seed}")


def to_kaggle_csvs(raw: RawData, folder, line_ending: str = "\n") -> None:
    """Write ``raw`` as the Kaggle files (train.csv, features.csv, stores.csv), e.g. to test the loader."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = raw.sales.rename(columns={"store": "Store", "dept": "Dept", "date": "Date",
                                      "weekly_sales": "Weekly_Sales", "is_holiday": "IsHoliday"})
    train = train[["Store", "Dept", "Date", "Weekly_Sales", "IsHoliday"]]
    features = raw.external.rename(columns={"store": "Store", "date": "Date", "temperature": "Temperature",
                                            "fuel_price": "Fuel_Price", "cpi": "CPI",
                                            "unemployment": "Unemployment", "is_holiday": "IsHoliday",
                                            **{m: m.replace("markdown", "MarkDown") for m in MARKDOWNS}})
    stores = raw.stores.rename(columns={"store": "Store", "type": "Type", "size": "Size"})
    for name, frame in (("train.csv", train), ("features.csv", features), ("stores.csv", stores)):
        text = frame.to_csv(index=False, date_format="%Y-%m-%d", na_rep="NA",
                            lineterminator=line_ending).replace("True", "TRUE").replace("False", "FALSE")
        (folder / name).write_bytes(text.encode())
