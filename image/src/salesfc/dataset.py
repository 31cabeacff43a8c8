"""From a feature frame (training set or online rows) to the model's tensors, the same way every time.

The target is scale-aware: each row has a scale, the series' recent typical sales taken from its lagged
statistics (the 52-week mean, else a shorter one, else last week's sales; at least ``SCALE_FLOOR`` dollars), and
the model predicts ``weekly_sales / scale``. Sales-derived inputs are divided by the series' level (the scale
without the season, below), so a $200 and a $200,000 department look alike to the network and it learns shapes
(seasonality, holiday lift, markdown response) that departments share. Trained with a loss weighted by scale (and
x5 in holiday weeks), the error it minimizes is the Kaggle WMAE in dollars.

The scale also carries the season: where the level is the 52-week mean, it is multiplied by the department's
seasonal profile for the target week's week of year, fitted on the training rows (their sales against their level,
pooled over the department's stores and with the weeks beside it except around holidays, and shrunk towards 1
where few rows have the week). The network then learns how a series and a year differ from the department's usual
pattern, not the pattern itself, and every training row, holiday season included, is scaled the same way. A later
week (``--horizon``) is scaled by its own week's profile: the calendar of a week ahead is known at the origin.

Everything fitted (means, spreads, category codes, fallback scales) comes from training rows only and is saved
as JSON beside the model; inference applies it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from salesfc import distributed, statistics
from salesfc.distributed import Context
from salesfc.errors import UserError
from salesfc.tables import TIMESTAMP, SeriesWeeks, column_array, epoch_days, float_column

SCALE_FLOOR = 10.0
SCALE_SOURCES = ["sales_rolling_mean_52", "sales_rolling_mean_12", "sales_rolling_mean_8", "sales_rolling_mean_4",
                 "sales_lag_1"]
HOLIDAY_WEIGHT = 5.0  # Kaggle's WMAE weights holiday weeks 5 to 1
WEIGHT_POWER = 1.0    # loss weight = scale ** WEIGHT_POWER: 1 makes the training loss the dollar WMAE
NOT_FEATURES = {"store_dept", "store", "dept", TIMESTAMP, "weekly_sales", "expected_sales"}
CATEGORIES = ["store", "dept", "week_of_year", "store_type", "holiday_code"]
# How each known input enters the network; anything else numeric is standardized as is ("plain").
TRANSFORMS = {
    **{f"sales_lag_{k}": "per_scale" for k in (1, 2, 4, 8, 51, 52, 53)},
    "sales_year_ago_mean_4": "per_scale",
    **{f"sales_rolling_{stat}_{w}": "per_scale" for stat in ("mean", "std") for w in (4, 8, 12, 52)},
    "weeks_of_history": "log",
    "store_size": "log",
    **{f"markdown{k}": "log" for k in range(1, 6)},
    "total_markdown": "log",
    "holiday_markdown_interaction": "log",
    "markdown_momentum": "log",
    "sales_velocity": "clip",
    "sales_acceleration": "clip",
    "demand_stability_score": "clip",
    "seasonal_index": "clip",
}
# The scale carries the department's seasonal profile (see Preprocessor.scale): a week of year
# seen in this many training rows of the department counts half, its profile shrunk halfway towards 1; within limits.
SEASON_PRIOR_ROWS = 20.0
SEASON_LIMITS = (0.2, 5.0)
# A week's profile pools its cell with the weeks beside it, by these weights (the week before, itself, the week
# after): one cell holds one row per store and year, so its ratio carries the noise of a few dozen rows, and seasons
# change from week to week far less than that noise. Not across the weeks that carry a holiday or the holiday season
# (ISO weeks; Super Bowl 6, Labor Day 36, Thanksgiving 47, the Christmas rush to the week after Christmas 49-52 and 1):
# their lift is their own.
SEASON_POOLING = (0.25, 0.5, 0.25)
EVENT_WEEKS = (1, 6, 36, 46, 47, 48, 49, 50, 51, 52, 53)
WEEKS_OF_YEAR = 53
PER_SCALE_LIMIT = 10.0
CLIP_LIMIT = 5.0
# Standardized inputs are clipped here: a value far outside anything seen in training (a markdown ten times the
# largest, a new store's size) must not drive the network into territory it never learned.
INPUT_LIMIT = 6.0


def pool_neighbours(cells: np.ndarray) -> np.ndarray:
    """(departments, WEEKS_OF_YEAR) sums -> each ordinary week's SEASON_POOLING-weighted sum of itself and its ordinary
    neighbours (the year wraps); event weeks keep their own."""
    ordinary = ~np.isin(np.arange(1, WEEKS_OF_YEAR + 1), EVENT_WEEKS)
    reach = len(SEASON_POOLING) // 2
    pooled = np.zeros_like(cells)
    for offset, weight in zip(range(-reach, reach + 1), SEASON_POOLING):
        beside = np.roll(ordinary, -offset)  # beside[w]: week w + offset is ordinary
        pooled += weight * np.where(ordinary & beside, np.roll(cells, -offset, axis=1), 0.0)
    return np.where(ordinary, pooled, cells)


def signed_log(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


@dataclass
class Batch:
    """A frame turned into arrays: numeric inputs, category codes, scale, and (for labelled rows) target/weight."""

    numeric: np.ndarray        # float32 (rows, inputs)
    categories: np.ndarray     # int64 (rows, len(CATEGORIES))
    scale: np.ndarray          # float64 (rows,)
    target: np.ndarray | None  # float32 weekly_sales / scale
    weight: np.ndarray | None  # float32, mean 1 on the training rows


class Lookup:
    """A mapping applied to a whole array at once, with ``missing`` for values it does not hold: what ``dict.get``
    gives per row, at the cost of one search rather than a pandas map (a millisecond on the one row a served forecast
    has) or a Python loop (seconds on a training set)."""

    def __init__(self, mapping: dict):
        keys = np.array(list(mapping.keys()))
        order = np.argsort(keys, kind="stable")
        self.keys, self.values = keys[order], np.array(list(mapping.values()))[order]

    def __call__(self, wanted: np.ndarray, missing) -> np.ndarray:
        if not len(self.keys):
            return np.full(len(wanted), missing)
        at = np.searchsorted(self.keys, wanted).clip(max=len(self.keys) - 1)
        return np.where(self.keys[at] == wanted, self.values[at], missing)


class Preprocessor:
    def __init__(self, params: dict):
        self.params = params
        # Built on first use: fit() applies scale() before the inputs are fitted (scale and categories are final).
        self._lookups: tuple[Lookup, list[Lookup]] | None = None
        self._season_table: tuple[np.ndarray, Lookup] | None = None

    def lookups(self) -> tuple[Lookup, list[Lookup]]:
        """The department scale fallback and each category's codes (0 = not seen in training)."""
        if self._lookups is None:
            fallback = Lookup({int(dept): value for dept, value in self.params["scale"]["dept_fallback"].items()})
            codes = [Lookup({value: code + 1 for code, value in enumerate(spec["values"])})
                     for spec in self.params["categories"]]
            self._lookups = (fallback, codes)
        return self._lookups

    # -- fitting (training rows only) ------------------------------------------------------------------------
    @classmethod
    def fit(cls, train: pd.DataFrame, context: Context | None = None) -> "Preprocessor":
        """Fit on the training rows: ``train`` whole, or, with a distributed ``context``, each rank's own shard of
        them, every statistic reduced over the ranks so that every rank gets what a fit on all the rows gives."""
        context = context or distributed.alone()
        columns = [c for c in train.columns if c not in NOT_FEATURES and c not in CATEGORIES
                   and pd.api.types.is_numeric_dtype(train[c])]
        # The department's median |sales| (the scale of a series without history), and the median of all rows.
        depts = statistics.union(context, (int(d) for d in train["dept"].unique()))
        group = np.searchsorted(depts, train["dept"].to_numpy(dtype=np.int64))
        abs_sales = np.abs(train["weekly_sales"].to_numpy(dtype=np.float64))
        middle = statistics.medians(context, np.concatenate([abs_sales, abs_sales]),
                                    np.concatenate([group, np.full(len(group), len(depts))]), len(depts) + 1)
        params = {
            "scale": {"sources": SCALE_SOURCES, "floor": SCALE_FLOOR,
                      "dept_fallback": {str(dept): float(max(SCALE_FLOOR, value))
                                        for dept, value in zip(depts, middle[:-1])},
                      "global_fallback": float(max(SCALE_FLOOR, middle[-1]))},
            # A list, not a mapping: its order is the order of the model's embedding tables.
            "categories": [{"name": name, "values": cls._vocabulary(train, name, context)} for name in CATEGORIES],
            "inputs": [],
            "dropped_inputs": [],
        }
        pre = cls(params)
        level = pre.level(train)
        params["scale"]["season"] = cls._season(train, level, depts, group, context)
        for column in columns:
            kind = TRANSFORMS.get(column, "plain")
            raw = pre._raw(train, column, kind, level)
            mean, std, count = statistics.mean_std(context, raw)
            if count < 2 or std < 1e-9:
                # Never varies in training (markdowns before they existed, say): nothing to learn from, and a value
                # first seen at forecast time would only push an untrained weight.
                params["dropped_inputs"].append(column)
                continue
            params["inputs"].append({"column": column, "transform": kind, "mean": mean, "std": std,
                                     "missing_flag": statistics.any_true(context, bool(np.isnan(raw).any()))})
        # Series that sold a negative amount (returns) in training may again; the others' forecasts are floored at 0.
        negative = train.loc[train["weekly_sales"] < 0, "store_dept"].unique()
        params["may_go_negative"] = statistics.union(context, (int(key) for key in negative))
        mean, std, _ = statistics.mean_std(context, np.log(level))
        params["log_scale"] = {"mean": mean, "std": std or 1.0}
        weight = pre._weight(train, pre.scale(train, level=level))
        total, rows = context.sum_array([weight.sum(), len(weight)])
        params["weight_mean"] = float(total / rows)
        return pre

    @staticmethod
    def _season(train: pd.DataFrame, level: np.ndarray, depts: list, group: np.ndarray, context: Context) -> dict:
        """Each department's profile by week of year: the sum of its sales over the sum of their levels, over the
        training rows whose level is the 52-week mean (the level the profile multiplies), each week's sums pooled with
        the weeks beside it (pool_neighbours), shrunk towards 1."""
        against = ~np.isnan(float_column(train, SCALE_SOURCES[0]))
        week = column_array(train, "week_of_year").astype(np.int64) - 1
        cell = (group * WEEKS_OF_YEAR + np.clip(week, 0, WEEKS_OF_YEAR - 1))[against]
        size = len(depts) * WEEKS_OF_YEAR
        sums = [np.bincount(cell, weights=weights, minlength=size)
                for weights in (float_column(train, "weekly_sales")[against], level[against], np.ones(len(cell)))]
        sales, levels, rows = (pool_neighbours(cells) for cells in
                               context.sum_array(np.stack(sums)).reshape(3, len(depts), WEEKS_OF_YEAR))
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(levels > 0, sales / levels, 1.0)
        profile = np.clip((rows * ratio + SEASON_PRIOR_ROWS) / (rows + SEASON_PRIOR_ROWS), *SEASON_LIMITS)
        return {str(dept): [round(float(v), 6) for v in values] for dept, values in zip(depts, profile)}

    @staticmethod
    def _vocabulary(train: pd.DataFrame, name: str, context: Context) -> list:
        if name == "week_of_year":
            return list(range(1, 54))  # every week, seen in training or not
        if name == "holiday_code":
            return list(range(5))  # every holiday, seen in training or not
        if name == "store_type":
            return statistics.union(context, (str(v) for v in train[name].dropna().unique()))
        return statistics.union(context, (int(v) for v in train[name].unique()))

    # -- applying ---------------------------------------------------------------------------------------------
    def level(self, frame: pd.DataFrame) -> np.ndarray:
        """The series' typical weekly sales: the first of the scale's sources a row has, else its department's."""
        spec = self.params["scale"]
        scale = np.full(len(frame), np.nan)
        for source in spec["sources"]:
            values = np.abs(float_column(frame, source))
            scale = np.where(np.isnan(scale), values, scale)
        fallback = self.lookups()[0](column_array(frame, "dept").astype(int), spec["global_fallback"]).astype(float)
        scale = np.where(np.isnan(scale), fallback, scale)
        return np.maximum(scale, spec["floor"])

    def scale(self, frame: pd.DataFrame, days: np.ndarray | None = None, step: np.ndarray | int = 0,
              level: np.ndarray | None = None) -> np.ndarray:
        """What the target of the week ``step`` weeks after each row's own is divided by: the level, times the
        department's profile for that week of year where the level is the 52-week mean the profile is measured
        against (the module's text). ``days``: each row's own week (days since 1970-01-01), needed for a later week;
        ``level``: the rows' ``level`` where the caller has it already."""
        level = self.level(frame) if level is None else level
        return level * self._profile(frame, [self._week(frame, days, step)])[0]

    def horizon_scales(self, frame: pd.DataFrame, days: np.ndarray, horizon: int) -> np.ndarray:
        """(rows, horizon): the scale of each row's own week and of the horizon - 1 weeks after it."""
        profiles = self._profile(frame, [self._week(frame, days, step) for step in range(horizon)])
        return self.level(frame)[:, None] * np.stack(profiles, axis=1)

    @staticmethod
    def _week(frame: pd.DataFrame, days: np.ndarray | None, step: np.ndarray | int) -> np.ndarray:
        """The ISO week of year of the week ``step`` weeks after each row's own: its week_of_year column, or for a
        later week the calendar the network looks target weeks up in (salesfc.model.calendar_table)."""
        if np.all(np.asarray(step) == 0):
            return column_array(frame, "week_of_year").astype(np.int64)
        from salesfc.model import calendar_table

        target = np.asarray(days, dtype=np.int64) + 7 * np.asarray(step, dtype=np.int64)
        return calendar_table()[0].numpy()[target]

    def _profile(self, frame: pd.DataFrame, weeks: list[np.ndarray]) -> list[np.ndarray]:
        """The seasonal factor of each row for each of ``weeks`` (1 without a fitted profile): the department and the
        rows it applies to are looked up once for all of them."""
        if not self.params["scale"].get("season"):
            return [np.ones(len(frame)) for _ in weeks]
        table, index = self.season_table()
        row = index(column_array(frame, "dept").astype(np.int64), len(table) - 1)  # unseen: the last row, all 1
        against = ~np.isnan(float_column(frame, self.params["scale"]["sources"][0]))
        return [np.where(against, table[row, np.clip(week - 1, 0, WEEKS_OF_YEAR - 1)], 1.0) for week in weeks]

    def season_table(self) -> tuple[np.ndarray, "Lookup"]:
        """The fitted profiles as a (departments + 1, weeks) array and the lookup of a department's row."""
        if self._season_table is None:
            season = self.params["scale"]["season"]
            table = np.ones((len(season) + 1, WEEKS_OF_YEAR))
            table[:-1] = [season[dept] for dept in season]
            self._season_table = (table, Lookup({int(dept): i for i, dept in enumerate(season)}))
        return self._season_table

    @staticmethod
    def _raw(frame: pd.DataFrame, column: str, kind: str, scale: np.ndarray) -> np.ndarray:
        values = float_column(frame, column)
        if kind == "per_scale":
            return np.clip(values / scale, -PER_SCALE_LIMIT, PER_SCALE_LIMIT)
        if kind == "log":
            return signed_log(values)
        if kind == "clip":
            return np.clip(values, -CLIP_LIMIT, CLIP_LIMIT)
        return values

    @property
    def n_numeric(self) -> int:
        return len(self.params["inputs"]) + sum(spec["missing_flag"] for spec in self.params["inputs"]) + 1

    @property
    def cardinalities(self) -> list[int]:
        # Code 0 is "not seen in training".
        return [len(spec["values"]) + 1 for spec in self.params["categories"]]

    def required_columns(self) -> list[str]:
        """Every column ``transform`` reads: the fitted inputs, the categories and the scale's sources."""
        wanted = [spec["column"] for spec in self.params["inputs"]]
        wanted += [spec["name"] for spec in self.params["categories"]] + list(self.params["scale"]["sources"])
        wanted += ["week_of_year"] if self.params["scale"].get("season") else []
        return list(dict.fromkeys(wanted + ["dept"]))

    def transform(self, frame: pd.DataFrame) -> Batch:
        # A fitted input that is not there must stop the forecast: read as missing it would become the training
        # mean for every row, and a renamed feature would quietly degrade every forecast instead of failing once.
        absent = [column for column in self.required_columns() if column not in frame.columns]
        if absent:
            raise UserError(f"the model was trained with column(s) {', '.join(absent)}, which the {len(frame):,} rows "
                            "to forecast do not have: the feature definitions changed since training; run "
                            "`salesfc prep`, then `salesfc train` again (or infer with the matching --run-id)")
        level = self.level(frame)
        scale = self.scale(frame, level=level)
        numeric = np.empty((len(frame), self.n_numeric), dtype=np.float32)
        position = 0
        flags = []
        for spec in self.params["inputs"]:
            raw = self._raw(frame, spec["column"], spec["transform"], level)
            missing = np.isnan(raw)
            standard = np.clip((raw - spec["mean"]) / spec["std"], -INPUT_LIMIT, INPUT_LIMIT)
            numeric[:, position] = np.where(missing, 0.0, standard)
            position += 1
            if spec["missing_flag"]:
                flags.append(missing)
        for missing in flags:
            numeric[:, position] = missing
            position += 1
        log_scale = self.params["log_scale"]
        numeric[:, position] = (np.log(level) - log_scale["mean"]) / log_scale["std"]

        categories = np.zeros((len(frame), len(self.params["categories"])), dtype=np.int64)
        for i, (spec, codes) in enumerate(zip(self.params["categories"], self.lookups()[1])):
            name = spec["name"]
            values = column_array(frame, name).astype(str if name == "store_type" else np.int64)
            categories[:, i] = codes(values, 0)

        target = weight = None
        if "weekly_sales" in frame:
            target = (float_column(frame, "weekly_sales") / scale).astype(np.float32)
            weight = (self._weight(frame, scale) / self.params["weight_mean"]).astype(np.float32)
        return Batch(numeric, categories, scale, target, weight)

    def floor(self, frame: pd.DataFrame, forecast: np.ndarray) -> np.ndarray:
        """No negative forecast for a series that never sold a negative amount in training."""
        may = np.isin(column_array(frame, "store_dept"), self.params.get("may_go_negative", []))
        may = may.reshape(-1, *[1] * (forecast.ndim - 1))  # a row's every horizon
        return np.where(may, forecast, np.maximum(forecast, 0.0))

    def horizon_targets(self, ahead: "Ahead", scales: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Target and weight (rows, horizon) of each row's later weeks, as ``transform`` makes them for the row's own
        week, each over its own week's scale (``horizon_scales``); both 0 where ``keep`` is False (no sales that week,
        or a week of another part of the split)."""
        with np.errstate(invalid="ignore"):
            target = np.where(keep, ahead.sales / scales, 0.0).astype(np.float32)
        weight = self.weight_of(ahead.holiday, scales) / self.params["weight_mean"]
        return target, np.where(keep, weight, 0.0).astype(np.float32)

    @classmethod
    def _weight(cls, frame: pd.DataFrame, scale: np.ndarray) -> np.ndarray:
        return cls.weight_of(float_column(frame, "is_holiday"), scale)

    @staticmethod
    def weight_of(is_holiday: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Scale x holiday weight: a loss on the scaled target weighted so is the dollar WMAE."""
        return scale ** WEIGHT_POWER * np.where(is_holiday > 0, HOLIDAY_WEIGHT, 1.0)


@dataclass
class Ahead:
    """What each row of a frame (an origin: its own week is its first target week) finds h - 1 weeks later in the
    same series, for h = 1 ... horizon: (rows, horizon) arrays. ``found`` is False where the frame has no row for that
    series and week (not reported, or not read); the other arrays are NaN (0 for the holiday flag) there."""

    days: np.ndarray      # int64 (rows,): each row's own week, days since 1970-01-01
    found: np.ndarray     # bool
    sales: np.ndarray     # float64
    expected: np.ndarray  # float64: the synthetic generator's noiseless sales (NaN on real data)
    holiday: np.ndarray   # float64 0/1

    def rows(self, chosen: np.ndarray) -> "Ahead":
        return Ahead(self.days[chosen], self.found[chosen], self.sales[chosen], self.expected[chosen],
                     self.holiday[chosen])

    @property
    def target_days(self) -> np.ndarray:
        return self.days[:, None] + 7 * np.arange(self.found.shape[1])

    @classmethod
    def of(cls, frame: pd.DataFrame, horizon: int) -> "Ahead":
        days = epoch_days(frame[TIMESTAMP])
        series = frame["store_dept"].to_numpy(dtype=np.int64)
        index = SeriesWeeks(series, days)
        columns = {"sales": frame["weekly_sales"].to_numpy(dtype=np.float64),
                   "expected": (frame["expected_sales"].to_numpy(dtype=np.float64, na_value=np.nan)
                                if "expected_sales" in frame else np.full(len(frame), np.nan)),
                   "holiday": frame["is_holiday"].to_numpy(dtype=np.float64)}
        found = np.zeros((len(frame), horizon), dtype=bool)
        out = {name: np.full((len(frame), horizon), np.nan) for name in columns}
        for h in range(horizon):
            row, found[:, h] = index.find(series, days + 7 * h)
            for name, values in columns.items():
                out[name][:, h] = np.where(found[:, h], values[row], np.nan)
        out["holiday"] = np.nan_to_num(out["holiday"])
        return cls(days, found, **out)


@dataclass(frozen=True)
class Split:
    """Train before ``val_start``; validate (early stopping) from val_start; test (held out) from test_start."""

    val_start: pd.Timestamp
    test_start: pd.Timestamp
    last_week: pd.Timestamp

    @classmethod
    def from_weeks(cls, weeks: pd.Series, val_weeks: int, test_weeks: int) -> "Split":
        unique = np.sort(weeks.unique())
        if len(unique) < val_weeks + test_weeks + 8:
            raise ValueError(f"{len(unique)} weeks of data cannot hold {test_weeks} test weeks, {val_weeks} "
                             "validation weeks and at least 8 training weeks")
        return cls(pd.Timestamp(unique[-(val_weeks + test_weeks)]), pd.Timestamp(unique[-test_weeks]),
                   pd.Timestamp(unique[-1]))

    def without_validation(self) -> "Split":
        """The same held-out weeks, every week before them training (a refit's split)."""
        return Split(self.test_start, self.test_start, self.last_week)

    def part(self, weeks: pd.Series) -> np.ndarray:
        """0 = train, 1 = validation, 2 = test, per row."""
        return np.select([weeks < self.val_start, weeks < self.test_start], [0, 1], 2)

    def part_of_days(self, days: np.ndarray) -> np.ndarray:
        """``part`` of weeks given as days since 1970-01-01 (any shape)."""
        val_start, test_start = epoch_days([self.val_start, self.test_start])
        return np.select([days < val_start, days < test_start], [0, 1], 2)

    def to_json(self) -> dict:
        return {"val_start": f"{self.val_start:%Y-%m-%d}", "test_start": f"{self.test_start:%Y-%m-%d}",
                "last_week": f"{self.last_week:%Y-%m-%d}"}

    @classmethod
    def from_json(cls, value: dict) -> "Split":
        return cls(*(pd.Timestamp(value[k], tz="UTC") for k in ("val_start", "test_start", "last_week")))

