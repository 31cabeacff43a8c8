"""Everything salesfc asks of Feast: open the store, apply the definitions, load tables, read features.

Which store is open follows ``--feature-store``: 'local', 'postgres', 'spark' (files of the feature repo) or the path
of a feature_store.yaml (the chart's ConfigMap). ``${SALESFC_PG_*}`` placeholders in the file are filled from the --pg-*
settings and SALESFC_PG_PASSWORD: Feast expands environment variables when it reads the file, so salesfc puts the
resolved settings into its own environment first. Relative paths in the file resolve against <workdir>/feast.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import typeguard


def _unchecked(target=None, **_options):
    return target if target is not None else _unchecked


# Feast decorates some 40 classes with typeguard's @typechecked, which re-parses and recompiles their modules'
# source at import: 2-3 s of every salesfc process (each stage, each rank) for run-time argument checks that
# typeguard itself calls a development aid and skips under `python -O`. salesfc hands Feast only objects built from
# its own definitions (a wrong type still fails, inside Feast), so every process imports Feast the way -O would.
typeguard.typechecked = _unchecked
import feast  # noqa: E402,F401 - slow (seconds); imported once here, then its warning filters are overridden below

from salesfc import settings, spark_env, tables
from salesfc.errors import UserError
from salesfc.tables import LABELS, TIMESTAMP, Location
from salesfc.waiting import wait_for
from salesfc.workspace import atomic_path

log = logging.getLogger(__name__)

# Feast installs "once" filters on import; these two warnings are about Feast's and ibis's own internals (on-demand
# views called "experimental", a duckdb method ibis still uses) and tell a user nothing to do.
warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="ibis")
warnings.filterwarnings("ignore", message="pandas only supports SQLAlchemy connectable")

SERVICE = "demand_forecasting_service"
DEFINITIONS = "definitions.py"
NAMED_STORES = {"local": "feature_store.yaml", "postgres": "feature_store.postgres.yaml",
                "spark": "feature_store.spark.yaml"}
ENTITY_COLUMNS = ["store_dept", "store"]


def feature_repo(config) -> Path:
    """The feature repository: the setting, else the one shipped beside the package (image or checkout)."""
    if config.feature_repo:
        path = Path(config.feature_repo)
        if not (path / DEFINITIONS).is_file():
            raise UserError(f"--feature-repo {path}: no {DEFINITIONS} there")
        return path
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "feature_repo", Path.cwd() / "feature_repo"):
        if (candidate / DEFINITIONS).is_file():
            return candidate
    raise UserError("no feature repository found: pass --feature-repo (the folder with definitions.py)")


def yaml_file(config) -> Path:
    choice = config.feature_store
    path = feature_repo(config) / NAMED_STORES[choice] if choice in NAMED_STORES else Path(choice)
    if not path.is_file():
        raise UserError(f"--feature-store {choice}: {path} does not exist (use 'local', 'postgres', 'spark' or the "
                        "path of a feature_store.yaml)")
    return path


def export_store_environment(config) -> None:
    """Put the resolved --pg-* and --spark-* settings where Feast's ${...} expansion finds them."""
    password = settings.password()
    if any(char in password for char in "'\n\r"):
        raise UserError(f"{settings.PASSWORD_ENV} contains a quote or a line break, which feature_store.yaml "
                        "cannot hold; choose a password without them")
    os.environ.update({
        "SALESFC_PG_HOST": config.pg_host, "SALESFC_PG_PORT": str(config.pg_port),
        "SALESFC_PG_DATABASE": config.pg_database, "SALESFC_PG_USER": config.pg_user,
        "SALESFC_PG_SSLMODE": config.pg_sslmode, settings.PASSWORD_ENV: password,
        "SALESFC_SPARK_MASTER": config.spark_master, "SALESFC_SPARK_DRIVER_HOST": config.spark_driver_host,
    })
    # Spark's Python workers (the materialization engine's UDFs) run this interpreter, which has Feast and salesfc,
    # not the first python3 on PATH; on a standalone cluster the image's venv has the same path on every worker.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if config.spark_master.startswith("local"):
        # Local mode talks only to itself: bind the loopback, not the address of a host name that may not resolve
        # (containers often have none; Spark would stop at InetAddress.getLocalHost).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


# libpq's words for a certificate that will not verify however long one waits.
CERTIFICATE_ERRORS = ("certificate verify failed", "root certificate file", "does not match host name",
                      "server certificate for")


@dataclass(frozen=True)
class Endpoint:
    """A PostgreSQL server the configured store uses (registry, offline or online store)."""

    host: str
    port: int
    database: str
    user: str
    password: str
    sslmode: str

    def __str__(self) -> str:
        return f"PostgreSQL {self.user}@{self.host}:{self.port}/{self.database}"

    def connect(self, timeout: float = 10):
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, dbname=self.database, user=self.user,
                               password=self.password or None, sslmode=self.sslmode, connect_timeout=int(timeout))

    def unreachable(self) -> str | None:
        try:
            with self.connect(timeout=5) as conn:
                conn.execute("SELECT 1")
        except Exception as err:  # psycopg raises several kinds; all but a certificate problem mean "not yet"
            text = str(err).strip()
            if any(sign in text for sign in CERTIFICATE_ERRORS):
                raise UserError(f"{self}: the server's TLS certificate does not verify with sslmode={self.sslmode} "
                                f"(root certificates: {os.environ.get('PGSSLROOTCERT') or '~/.postgresql/root.crt'}):"
                                f" {text.splitlines()[0]}. Give the CA that signed the server's certificate (the "
                                "chart: postgresql.external.caSecret; for its own server, the ca.crt of "
                                "postgresql.tls.existingSecret, and a certificate naming the host), or a weaker "
                                "sslmode") from err
            return text.splitlines()[0] if text else type(err).__name__
        return None


def endpoints(repo_config) -> list[Endpoint]:
    found: list[Endpoint] = []
    for store in (repo_config.offline_store, repo_config.online_store):
        if getattr(store, "type", None) == "postgres":
            found.append(Endpoint(store.host, int(store.port), store.database, store.user, store.password,
                                  store.sslmode or "require"))
    registry = repo_config.registry
    if getattr(registry, "registry_type", "") == "sql" and str(registry.path).startswith("postgresql"):
        url = urlsplit(registry.path)
        connect = registry.sqlalchemy_config_kwargs.get("connect_args", {})
        found.append(Endpoint(url.hostname or "localhost", url.port or 5432, url.path.lstrip("/"),
                              connect.get("user") or url.username or "", connect.get("password") or url.password
                              or "", connect.get("sslmode", "prefer")))
    unique = {(e.host, e.port, e.database): e for e in found}
    return list(unique.values())


def repo_config(config):
    from feast.repo_config import load_repo_config

    export_store_environment(config)
    path = yaml_file(config)
    config.workspace.feast.mkdir(parents=True, exist_ok=True)
    try:
        return load_repo_config(config.workspace.feast, path)
    except Exception as err:
        raise UserError(f"{path}: not a valid Feast configuration: {str(err).splitlines()[0]}") from None


def location(repo_cfg, config) -> Location:
    kind = repo_cfg.offline_store.type
    # Feast's Ray store reads the same file sources as DuckDB; bench/engines.py measures it (no profile uses it).
    if kind in ("duckdb", "spark", "ray"):
        return Location("file", config.workspace.data, kind)
    if kind == "postgres":
        return Location("postgres", config.workspace.data, kind)
    raise UserError(f"offline store '{kind}' is not supported: use duckdb, spark or ray (parquet) or postgres")


def _check_spark(path: Path) -> None:
    """Spark's offline store needs pyspark and a Java runtime; without them Feast fails deep inside a read."""
    if importlib.util.find_spec("pyspark") is None:
        raise UserError(f"{path}: the spark offline store needs pyspark, a salesfc dependency: pip install "
                        "'pyspark>=4.0,<5' (the image has it)")
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise UserError(f"{path}: the spark offline store needs Java 17 or later: install a JRE (e.g. apt-get "
                        "install openjdk-17-jre-headless) or set JAVA_HOME")


def wait_for_databases(repo_cfg, timeout: float) -> None:
    for endpoint in endpoints(repo_cfg):
        wait_for(str(endpoint), endpoint.unreachable, timeout)


@dataclass
class Store:
    """An open Feast store with what salesfc needs beside it."""

    feast: object  # feast.FeatureStore
    location: Location
    yaml: Path
    endpoints: list[Endpoint]

    @property
    def uses_postgres(self) -> bool:
        return bool(self.endpoints)

    @functools.cached_property
    def service(self):
        """The feature service, resolved once: a registry lookup costs more than an online read."""
        return self.feast.get_feature_service(SERVICE)


def open_store(config, wait: bool = True) -> Store:
    """Open the configured store, waiting (up to --wait-timeout) for its database when it has one."""
    started = time.perf_counter()
    from feast import FeatureStore

    cfg = repo_config(config)
    if wait:
        wait_for_databases(cfg, config.wait_timeout)
    loc = location(cfg, config)
    if loc.engine == "spark":
        _check_spark(yaml_file(config))
        spark_env.prepare()
    tables.set_location(loc)
    try:
        store = FeatureStore(repo_path=str(config.workspace.feast), config=cfg)
    except Exception as err:
        raise UserError(f"cannot open the feature store of {yaml_file(config)}: {err}") from None
    log.debug("opened feature store in %.1f s", time.perf_counter() - started)
    return Store(store, loc, yaml_file(config), endpoints(cfg))


def load_definitions(config, store: Store) -> list:
    """Import feature_repo/definitions.py afresh, with the batch sources of this store's offline store."""
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource
    from feast.on_demand_feature_view import OnDemandFeatureView

    tables.set_location(store.location)
    path = feature_repo(config) / DEFINITIONS
    spec = importlib.util.spec_from_file_location("salesfc_feature_definitions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = (Entity, FeatureView, OnDemandFeatureView, FeatureService, DataSource)
    objects = [value for value in vars(module).values() if isinstance(value, kinds)]
    sources = {fv.batch_source.name: fv.batch_source for fv in objects if isinstance(fv, FeatureView)}
    return objects + [source for name, source in sources.items() if all(o is not source for o in objects)]


def apply(store: Store, objects: list) -> dict:
    """Our `feast apply`: register the definitions and remove what the repo no longer defines."""
    fs = store.feast
    project = fs.project
    registry = fs.registry
    wanted = {(type(o).__name__, o.name) for o in objects}
    existing = (registry.list_entities(project) + registry.list_feature_views(project)
                + registry.list_on_demand_feature_views(project) + registry.list_feature_services(project))
    stale = [o for o in existing if (type(o).__name__, o.name) not in wanted and o.name != "__dummy"]
    fs.apply(objects, objects_to_delete=stale, partial=False)
    return {"applied": sorted(name for _, name in wanted), "removed": sorted(o.name for o in stale)}


def write_offline_tables(store: Store, frames: dict[str, pd.DataFrame]) -> None:
    """Replace each table whole, atomically: parquet renamed into place, or one PostgreSQL transaction."""
    if store.location.kind == "file":
        import pyarrow as pa
        import pyarrow.parquet as pq

        for name, frame in frames.items():
            path = store.location.parquet(name)
            with atomic_path(path) as tmp:
                # DuckDB compares timestamps correctly only in microseconds.
                pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp, coerce_timestamps="us",
                               allow_truncated_timestamps=False)
        return
    with store.endpoints[0].connect() as conn:
        with conn.transaction():
            for name, frame in frames.items():
                _replace_pg_table(conn, Location.pg_table(name), frame)


def _pg_type(series: pd.Series) -> str:
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return "timestamptz"
    if pd.api.types.is_integer_dtype(series) or pd.api.types.is_bool_dtype(series):
        return "bigint"
    if pd.api.types.is_float_dtype(series):
        return "double precision"
    return "text"


def _replace_pg_table(conn, table: str, frame: pd.DataFrame) -> None:
    from psycopg import sql

    columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_pg_type(frame[c])))
                                 for c in frame.columns)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), columns))
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # Arrow's CSV writer is C++ and an order of magnitude faster than pandas' for 400K rows; empty unquoted
    # fields are NULL to COPY, and timestamps come out as ISO 8601 with a Z, which timestamptz reads as UTC.
    buffer = io.BytesIO()
    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), buffer,
                    pacsv.WriteOptions(include_header=False))
    copy = sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv)").format(sql.Identifier(table))
    with conn.cursor().copy(copy) as writer:
        writer.write(buffer.getvalue())
    keys = [c for c in ("store_dept", "store") if c in frame.columns][:1] + [TIMESTAMP]
    conn.execute(sql.SQL("CREATE UNIQUE INDEX ON {} ({})").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, keys))))
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def read_labels(store: Store) -> pd.DataFrame:
    if store.location.kind == "file":
        path = store.location.parquet(LABELS)
        if not path.is_file():
            raise UserError(f"{path} does not exist: run `salesfc prep` first")
        return pd.read_parquet(path)
    with store.endpoints[0].connect() as conn, conn.cursor() as cur:
        cur.execute(f'SELECT * FROM "{Location.pg_table(LABELS)}"')
        frame = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
    return frame


def materialize(store: Store, start: pd.Timestamp, end: pd.Timestamp) -> None:
    with _quiet():
        store.feast.materialize(start_date=start.to_pydatetime(), end_date=end.to_pydatetime())


def label_counts(store: Store) -> pd.Series:
    """Label rows per week: the index is every week the labels hold (UTC, in order). One read of the labels'
    timestamps, or one GROUP BY: what sizes the reads and cuts the split before any feature is read."""
    if store.location.kind == "file":
        import pyarrow.parquet as pq

        weeks = pq.read_table(store.location.parquet(LABELS), columns=[TIMESTAMP]).column(0).to_pandas()
        counts = pd.to_datetime(weeks, utc=True).value_counts()
    else:
        with store.endpoints[0].connect() as conn:
            found = conn.execute(_labels_query(f"{TIMESTAMP}, count(*)") + f" GROUP BY {TIMESTAMP}").fetchall()
        counts = pd.Series([n for _, n in found], index=pd.to_datetime([week for week, _ in found], utc=True))
    return counts.sort_index().astype(np.int64)


def rows_in_weeks(counts: pd.Series, since: pd.Timestamp | None = None, until: pd.Timestamp | None = None) -> int:
    """How many of the label rows ``counts`` (label_counts) fall in the weeks from ``since`` and before ``until``."""
    return int(counts[_in_weeks(counts.index, since, until)].sum())


def _in_weeks(weeks, since: pd.Timestamp | None, until: pd.Timestamp | None) -> np.ndarray:
    keep = np.ones(len(weeks), dtype=bool)
    if since is not None:
        keep &= np.asarray(weeks >= since)
    if until is not None:
        keep &= np.asarray(weeks < until)
    return keep


def _labels_query(columns: str, since: pd.Timestamp | None = None, until: pd.Timestamp | None = None,
                  part: tuple[int, int] | None = None) -> str:
    """SQL over the labels table in PostgreSQL: the label rows from ``since``, before ``until``, of part i of n of
    the series."""
    conditions = []
    if since is not None:
        conditions.append(f"{TIMESTAMP} >= '{pd.Timestamp(since).isoformat()}'::timestamptz")
    if until is not None:
        conditions.append(f"{TIMESTAMP} < '{pd.Timestamp(until).isoformat()}'::timestamptz")
    if part is not None:
        conditions.append(f"{tables.series_part_sql('store_dept', part[1])} = {int(part[0])}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f'SELECT {columns} FROM "{Location.pg_table(LABELS)}"{where}'


def historical_features(store: Store, labels: pd.DataFrame | None = None, since: pd.Timestamp | None = None,
                        part: tuple[int, int] | None = None, until: pd.Timestamp | None = None) -> pd.DataFrame:
    """The training set: every label row with its point-in-time features, exactly one row per label row.

    With the DuckDB store the entity rows are the labels frame; with PostgreSQL they are a query over the labels
    table (the store embeds it, instead of inserting the rows one by one). ``since`` keeps the label rows of that
    week and later only: an evaluation reads the weeks it scores, not the whole history; ``until`` the weeks before
    it: training never reads the held-out weeks. ``part`` = (i, n) keeps
    the series of part i of n (tables.series_part): one rank's shard, or one read of it.
    """
    fs = store.feast
    if store.location.kind == "postgres":
        entity_df = _labels_query("*", since, until, part)
        expected = None
    else:
        entity_df = read_labels(store) if labels is None else labels
        keep = _in_weeks(entity_df[TIMESTAMP], since, until)
        if part is not None:
            keep &= tables.series_part(entity_df["store_dept"], part[1]) == part[0]
        if len(entity_df) and not keep.any():  # no series in this part: the columns a read gives, no rows
            return historical_features(store, labels=entity_df.iloc[:1]).iloc[:0]
        if not keep.all():
            entity_df = entity_df[keep].reset_index(drop=True)
        expected = len(entity_df)
    plan = on_demand_plan(store)
    with _quiet():
        frame = fs.get_historical_features(entity_df=entity_df,
                                           features=plan.batch_features if plan else store.service).to_df()
    if plan:
        frame = plan.apply(frame)
    # PostgreSQL returns naive UTC timestamps, DuckDB aware ones in microseconds, Spark in nanoseconds: make them
    # one thing.
    if not isinstance(frame[TIMESTAMP].dtype, pd.DatetimeTZDtype):
        frame[TIMESTAMP] = frame[TIMESTAMP].dt.tz_localize("UTC")
    frame[TIMESTAMP] = frame[TIMESTAMP].astype("datetime64[us, UTC]")
    frame = in_table_order(frame)
    week, key = frame[TIMESTAMP].array.asi8, frame["store_dept"].to_numpy(dtype=np.int64)
    duplicated = int(((week[1:] == week[:-1]) & (key[1:] == key[:-1])).sum())
    if duplicated or (expected is not None and len(frame) != expected):
        raise RuntimeError(f"feature retrieval returned {len(frame)} rows with {duplicated} duplicated entity rows "
                           f"for {expected or 'the'} label rows: the point-in-time join is broken")
    return frame


def in_table_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows by week, then series: the order of the tables and of one read."""
    order = np.lexsort((frame["store_dept"].to_numpy(dtype=np.int64), frame[TIMESTAMP].array.asi8))
    ordered = frame.take(order)  # a new frame already: reset_index would copy all of it once more
    ordered.index = pd.RangeIndex(len(ordered))
    return ordered


def reads_per_shard(rows: int, world_size: int, rows_per_read: int) -> int:
    """How many reads of about ``rows_per_read`` label rows each rank's shard of ``rows`` takes (the same on every
    rank)."""
    return max(1, math.ceil(rows / world_size / max(1, rows_per_read)))


def shard_features(store: Store, rank: int, world_size: int, reads: int = 1, on_read=None,
                   since: pd.Timestamp | None = None, until: pd.Timestamp | None = None) -> pd.DataFrame:
    """The label rows of one shard of the series (part ``rank`` of ``world_size``; 0 of 1 for all of them) with their
    features, read a slice of series at a time (``since`` and ``until``: the weeks, as historical_features).

    A read's peak is several times the rows it returns (the join, Feast's frame, the on-demand columns), so the
    shard is read in ``reads`` parts (reads_per_shard), and each part's float64 features are kept as float32 (the
    network's precision) before the next is read: memory grows with the shard, not the data. The label and its
    timestamp stay exact. ``on_read()`` is called after each read."""
    labels = None
    if store.location.kind == "file":
        labels = read_labels(store)
        labels = labels[tables.series_part(labels["store_dept"], world_size) == rank].reset_index(drop=True)
    frames = []
    for read in range(reads):
        # Part rank + world_size x read of world_size x reads: within this rank's part, since n divides n x reads.
        frame = historical_features(store, labels=labels, since=since, until=until,
                                    part=(rank + world_size * read, world_size * reads))
        frames.append(_compact(frame))
        del frame
        if on_read:
            on_read()
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


# Dollars that are scored, kept exact: the label, and the synthetic data's noiseless expectation (the noise floor).
KEEP_FLOAT64 = {"weekly_sales", "expected_sales"}


def _compact(frame: pd.DataFrame) -> pd.DataFrame:
    wide = [c for c in frame.columns if frame[c].dtype == np.float64 and c not in KEEP_FLOAT64]
    return frame.astype({c: np.float32 for c in wide}) if wide else frame


@dataclass
class OnDemandPlan:
    """The feature service read as its batch views' features, then its on-demand views applied to whole columns.

    Feast's own offline path turns the whole joined table (every column, timestamps included) into Python lists for
    a python-mode view (``pa_table.to_pydict()``): 5 s of the 7.7 s of a full-size read here, and it grows faster
    than the rows. The views' own functions, given numpy columns instead of lists, compute the same values (a test
    compares every column with Feast's path) in a fraction of a second. One definition of each feature stays: the
    functions in the feature repo, which Feast also runs for online reads.
    """

    batch_features: list[str]
    views: list  # feast OnDemandFeatureView, in the service's order

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        for view in self.views:
            outputs = view.feature_transformation.udf(_Columns(frame))
            for field in view.features:
                values = outputs[field.name]
                frame[field.name] = (np.array(values, dtype=np.float64) if "Float" in str(field.dtype)
                                     else pd.array(list(values)))
        return frame


class _Columns(dict):
    """A frame's columns as a python-mode view reads them (``inputs[name]``): numeric ones as float arrays with NaN
    where missing (what np.array makes of Feast's lists with None), the others as object arrays. Converted only
    when a view asks."""

    def __init__(self, frame: pd.DataFrame):
        super().__init__()
        self.frame = frame

    def __missing__(self, name: str):
        column = self.frame[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            return column.to_numpy(dtype=np.float64, na_value=np.nan)
        return column.to_numpy(dtype=object)


def on_demand_plan(store: Store) -> OnDemandPlan | None:
    """How to read the service with its on-demand views applied by salesfc, or None (Feast's own path) when the
    service has a view that is not in python mode or reads request data."""
    views = {view.name: view for view in store.feast.list_on_demand_feature_views()}
    batch, chosen = [], []
    for projection in store.service.feature_view_projections:
        view = views.get(projection.name)
        if view is None:
            batch += [f"{projection.name_to_use()}:{field.name}" for field in projection.features]
        elif view.mode == "python" and not view.singleton and not view.source_request_sources and \
                len(projection.features) == len(view.features):
            chosen.append(view)
        else:
            return None
    return OnDemandPlan(batch, chosen)


def online_features(store: Store, keys, timestamps: bool = False) -> dict[str, list]:
    """Latest features of each store department from the online store, as columns (one entry per key).

    With ``timestamps``, each feature also comes with ``<feature>__ts``: the week (epoch seconds) it belongs to.
    """
    keys = np.asarray(keys, dtype=np.int64)
    store_ids, _ = tables.split_store_dept(keys)
    response = store.feast.get_online_features(
        features=store.service, entity_rows={"store_dept": keys.tolist(), "store": store_ids.tolist()})
    return response.to_dict(include_event_timestamps=timestamps)


@contextlib.contextmanager
def _quiet():
    """Feast prints progress bars to stdout during materialization; keep our stdout for results."""
    stdout = sys.stdout
    sys.stdout = io.StringIO()
    try:
        yield
    finally:
        sys.stdout = stdout
