"""The tables `prep` writes and everything downstream reads, and where each offline store keeps them.

Three tables, one row per week:
* ``sales_history`` (per store department): the lagged sales features, source of ``sales_history_features``;
* ``store_context`` (per store): calendar, weather, economy, markdowns, source of ``store_external_features``;
* ``labels`` (per store department): the sales actually reported. Not a feature source: training passes these rows
  to Feast as the entity rows, so the target travels beside the features and never through them.

With the DuckDB offline store the tables are parquet files under ``<workdir>/data``; with the PostgreSQL offline
store they are tables named ``salesfc_<table>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SALES_HISTORY = "sales_history"
STORE_CONTEXT = "store_context"
LABELS = "labels"
TABLES = (SALES_HISTORY, STORE_CONTEXT, LABELS)
TIMESTAMP = "event_timestamp"
PG_PREFIX = "salesfc_"

# Departments are numbered below this, so store * DEPT_BASE + dept is a unique single-column key.
DEPT_BASE = 1000


def store_dept(store, dept):
    """The single join key of a store's department (see feature_repo/definitions.py for why it is one column)."""
    return np.asarray(store, dtype=np.int64) * DEPT_BASE + np.asarray(dept, dtype=np.int64)


EPOCH_DAY = pd.Timestamp("1970-01-01", tz="UTC")


def epoch_days(weeks) -> np.ndarray:
    """Timestamps (UTC) -> whole days since 1970-01-01 (int64): how a multi-horizon forecast names its weeks."""
    # No cache: to_datetime's caching first builds a Timestamp object per row to count the distinct ones (0.3 s for
    # the 426,000 labels), and whole weeks in datetime64 convert faster than that without it.
    stamps = pd.to_datetime(pd.Series(weeks), utc=True, cache=False)
    return ((stamps - EPOCH_DAY) // pd.Timedelta(days=1)).to_numpy(dtype=np.int64)


class SeriesWeeks:
    """The rows of a frame by (series, week): ``find`` answers where a series' given week is, for whole arrays at
    once (one sort here, one binary search per asked row). Weeks are days since 1970-01-01 (epoch_days)."""

    DAYS = 1_000_000  # a key is store_dept x DAYS + day: unique while days stay below it (until the year 4707)

    def __init__(self, store_dept, days: np.ndarray):
        keys = np.asarray(store_dept, dtype=np.int64) * self.DAYS + np.asarray(days, dtype=np.int64)
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]

    def find(self, store_dept, days) -> tuple[np.ndarray, np.ndarray]:
        """(row, found): the row of each asked (series, day), and whether there is one (row is 0 where not)."""
        wanted = np.asarray(store_dept, dtype=np.int64) * self.DAYS + np.asarray(days, dtype=np.int64)
        if not len(self.keys):
            return np.zeros(wanted.shape, dtype=np.int64), np.zeros(wanted.shape, dtype=bool)
        at = np.searchsorted(self.keys, wanted).clip(max=len(self.keys) - 1)
        found = self.keys[at] == wanted
        return np.where(found, self.order[at], 0), found


class Columns:
    """Equal-length numpy columns by name, read like a DataFrame by preprocessing (``col in``, ``[col]``,
    ``len``, ``.columns``): the frame of a served forecast. Preprocessing reads about forty columns of a few rows;
    building a DataFrame for them and pandas' per-column access were half of a served forecast's time."""

    def __init__(self, data: dict[str, np.ndarray]):
        self._data = data
        self._rows = len(next(iter(data.values()))) if data else 0

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, name: str) -> np.ndarray:
        return self._data[name]

    def __contains__(self, name: str) -> bool:
        return name in self._data

    @property
    def columns(self) -> list[str]:
        return list(self._data)

    def rows(self, mask: np.ndarray) -> "Columns":
        return Columns({name: values[mask] for name, values in self._data.items()})


def column_array(frame, name: str) -> np.ndarray:
    """A column of a DataFrame or of Columns, as numpy."""
    values = frame[name]
    return values if isinstance(values, np.ndarray) else values.to_numpy()


def float_column(frame, name: str) -> np.ndarray:
    """A column as floats, missing values (None, NA) as NaN, from a DataFrame or Columns alike."""
    values = frame[name]
    if isinstance(values, np.ndarray):
        return values.astype(float)
    return values.to_numpy(dtype=float, na_value=np.nan)


def split_store_dept(key) -> tuple[np.ndarray, np.ndarray]:
    key = np.asarray(key, dtype=np.int64)
    return key // DEPT_BASE, key % DEPT_BASE


# Series are dealt to parts (training ranks, and reads within a rank) by a multiplicative hash of their key: the
# key's own low digits are its department, and departments differ in size by orders of magnitude. The high 16 bits
# of the 32-bit product, so the parts do not follow the key's parity. Written once for numpy and once for SQL;
# a test checks that both give each series the same part.
_HASH_MULTIPLIER = 2654435761


def series_part(key, parts: int) -> np.ndarray:
    """The part (0 .. parts - 1) of each store_dept key."""
    key = np.asarray(key, dtype=np.int64)
    return ((key * _HASH_MULTIPLIER) % (1 << 32)) // (1 << 16) % parts


def series_part_sql(column: str, parts: int) -> str:
    """The same part as an SQL expression on a bigint column (PostgreSQL)."""
    return f"((({column} * {_HASH_MULTIPLIER}) % {1 << 32}) / {1 << 16}) % {int(parts)}"


@dataclass(frozen=True)
class Location:
    """Where the offline store reads the tables: 'file' (parquet in data_dir) or 'postgres', and the offline store
    that reads them (``engine``: duckdb, ray or spark read the parquet files; postgres its tables)."""

    kind: str
    data_dir: Path
    engine: str = "duckdb"

    def parquet(self, table: str) -> Path:
        return self.data_dir / f"{table}.parquet"

    @staticmethod
    def pg_table(table: str) -> str:
        return PG_PREFIX + table


_location: Location | None = None


def set_location(location: Location) -> None:
    global _location
    _location = location


def batch_source(table: str):
    """The Feast batch source of ``table`` for the offline store in use (set by salesfc before it loads the repo)."""
    if _location is None:
        raise RuntimeError(
            "feature_repo/definitions.py is applied by `salesfc prep`, which gives it the batch sources of the "
            "configured offline store; run that instead of `feast apply`"
        )
    if _location.kind == "postgres":
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

        return PostgreSQLSource(name=table, table=Location.pg_table(table), timestamp_field=TIMESTAMP)
    if _location.engine == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(name=table, path=str(_location.parquet(table).resolve()), file_format="parquet",
                           timestamp_field=TIMESTAMP)
    from feast import FileSource

    return FileSource(name=table, path=str(_location.parquet(table).resolve()), timestamp_field=TIMESTAMP)


def utc_weeks(dates) -> pd.Series:
    """Dates as tz-aware UTC midnight timestamps in microseconds: what both offline stores compare correctly."""
    return pd.to_datetime(pd.Series(dates), utc=True).dt.normalize().astype("datetime64[us, UTC]")
