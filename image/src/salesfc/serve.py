"""serve: real-time forecasts over HTTP, the online half of inference (LLD §4.2 option B, §6.2).

``POST /predict`` takes one store department (``{"store": 1, "dept": 1}``) or a batch (``{"rows": [...]}``), reads
their features from the online store, and answers next week's forecast with the same preprocessing and network as
``salesfc infer`` (salesfc.infer's ``Forecaster`` and ``online_rows``), so a served forecast equals the batch one;
a model's P10-P90 band too, which infer widens by the errors of the latest held-out weeks (salesfc.band) and serve
reads from infer's ``metrics.json`` (the model's own widening until infer has run on the data), as it reads the
level's factor (salesfc.correction; 1 until then).

What a caller can rely on:
* a pair that is not a series of the prepared data, or whose online row is not of the forecast week (stale), gets
  an error of its own in the answer; the other rows are still forecast. Never a made-up number.
* the database away: 503 with ``Retry-After``, the reason logged once; a background thread reopens the store and
  the service answers again by itself.
* a newer finished run (``models/LATEST``), newly prepared data or a newer infer report is loaded beside the one in use and swapped in
  with one assignment: a request holds the model it started with to its end.
* requests that arrive while the network is busy are forecast together (``Coalescer``: one online read, one pass
  of the network for all of them); one alone is forecast at once.

The app is built by ``create_app(config)``; nothing is loaded at import time. Probes: ``/healthz`` (the process
answers), ``/readyz`` (model, registry and an online read within --ready-timeout), ``/metrics`` (Prometheus).
"""

# No `from __future__ import annotations`: FastAPI reads the request and response models of create_app's endpoints
# from their annotations, which must be the classes themselves, not strings naming classes local to a function.
import asyncio
import collections
import contextlib
import logging
import os
import sqlite3
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Literal

import numpy as np
import pandas as pd

from salesfc import feature_store, infer, settings
from salesfc.errors import UserError
from salesfc.metrics import quantile_name
from salesfc.tables import DEPT_BASE, store_dept
from salesfc.workspace import read_json

log = logging.getLogger(__name__)

# Connections to the online store per process: requests beyond this wait for one (up to POOL_WAIT seconds) rather
# than opening more, so replicas x workers x POOL_SIZE bounds what the database sees.
POOL_SIZE = 8
POOL_WAIT = 2.0
CONNECT_TIMEOUT = 3
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class HorizonTooFar(Exception):
    """A request asked for more weeks ahead than the loaded model forecasts."""

    def __init__(self, asked: int, horizon: int, run_id: str):
        self.asked = asked
        super().__init__(f"horizon {asked} is more weeks ahead than model {run_id} forecasts (its --horizon is "
                         f"{horizon}): ask for a horizon from 1 to {horizon}, or train with --horizon {asked}")


class Unavailable(Exception):
    """The service cannot answer now (no model yet, database away); the message says why. Answered with 503."""


def database_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'the database is away', as opposed to a defect: those become 503, not 500."""
    errors: list[type[BaseException]] = [sqlite3.OperationalError, ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        import psycopg

        errors.append(psycopg.OperationalError)  # includes psycopg_pool's PoolTimeout
    with contextlib.suppress(ImportError):
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.OperationalError)  # the SQL registry's refresh
    return tuple(errors)


@dataclass(frozen=True)
class Loaded:
    """One run's model with the prepared data it forecasts from; replaced whole, never changed."""

    run_id: str
    forecaster: infer.Forecaster
    week: pd.Timestamp
    known: frozenset[int]
    source: tuple  # (run id, manifest's and infer's metrics' mtime and size): a change means something new to load
    widen: list[float] | None = None  # the band as infer last widened it for this week (infer.recent_calibration)
    level: float = 1.0  # and the level's factor (salesfc.correction)


# A row of a pair that is not a series of the prepared data.
UNKNOWN = None


@dataclass
class Forecasts:
    """What ``Service.forecast_rows`` made of some pairs: the model it used and one entry per pair."""

    loaded: Loaded
    rows: list


class Coalescer:
    """Requests that arrive while the network is busy are forecast together, in one online read and one pass of
    the network: most of a request's cost does not grow with its rows (Feast's read, the preprocessing, the
    network's calls), so eight requests answered at once cost little more than one. One thread forecasts: whenever
    it is idle it takes every request queued by then (up to ``max_rows`` rows, at least one request), so a request
    never waits for company. ``submit`` answers a concurrent Future (an async endpoint awaits it without holding a
    thread); ``run`` waits for it. ``on_batch(requests)`` is told the size of every batch."""

    def __init__(self, forecast, max_rows: int, on_batch=None):
        self._forecast = forecast
        self._max_rows = max_rows
        self._on_batch = on_batch or (lambda _requests: None)
        self._queue: collections.deque[tuple[list, Future]] = collections.deque()
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="salesfc-forecast", daemon=True)
        self._thread.start()

    def submit(self, pairs: list) -> Future:
        future: Future = Future()
        with self._changed:
            if self._closed:
                raise Unavailable("the service is stopping")
            self._queue.append((pairs, future))
            self._changed.notify()
        return future

    def run(self, pairs: list) -> Forecasts:
        return self.submit(pairs).result()

    def close(self) -> None:
        """Answer what is queued, then stop the thread."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout=10)

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft()]
                rows = len(batch[0][0])
                while self._queue and rows + len(self._queue[0][0]) <= self._max_rows:
                    rows += len(self._queue[0][0])
                    batch.append(self._queue.popleft())
            self._answer(batch)

    def _answer(self, batch: list[tuple[list, Future]]) -> None:
        self._on_batch(len(batch))
        try:
            done = self._forecast([pair for pairs, _ in batch for pair in pairs])
        except BaseException as err:  # every request of the batch answers with it (503, or the server's 500)
            for _, future in batch:
                future.set_exception(err)
            return
        start = 0
        for pairs, future in batch:
            future.set_result(Forecasts(done.loaded, done.rows[start:start + len(pairs)]))
            start += len(pairs)


def _pooled(store: feature_store.Store) -> None:
    """Give a PostgreSQL online store a connection pool of our own before its first read.

    Feast's default is one connection shared by every request thread, and after a database restart it keeps using
    the dead one. Our pool checks a connection before lending it (a restart costs one failed request at most, not
    all of them) and gives up waiting after POOL_WAIT seconds, so a request never hangs on an absent database.
    """
    online = store.feast.config.online_store
    if getattr(online, "type", None) != "postgres":
        return
    from feast.infra.utils.postgres.connection_utils import _get_conn_kwargs, _get_conninfo
    from feast.infra.utils.postgres.postgres_config import ConnectionType
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(conninfo=_get_conninfo(online), min_size=1, max_size=POOL_SIZE, open=False,
                          timeout=POOL_WAIT, check=ConnectionPool.check_connection, name="salesfc-online",
                          kwargs={**_get_conn_kwargs(online), "connect_timeout": CONNECT_TIMEOUT})
    pool.open(wait=False)
    online.conn_type = ConnectionType.pool
    # Feast creates its pool on first use unless one is there: this is the one it finds.
    store.feast._get_provider().online_store._conn_pool = pool


def _close(store: feature_store.Store) -> None:
    pool = getattr(store.feast._get_provider().online_store, "_conn_pool", None)
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.close(timeout=1)


class Service:
    """What the endpoints share: the open store, the loaded model, and the thread that keeps both current."""

    def __init__(self, config, metrics: "Metrics"):
        self.config = config
        self.metrics = metrics
        self.store: feature_store.Store | None = None
        self.loaded: Loaded | None = None
        self.store_problem: str | None = "starting: the feature store is not open yet"
        self.model_problem: str | None = "starting: no model loaded yet"
        self._failed_source: tuple | None = None
        self._retired: list[feature_store.Store] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._probe = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz")
        self._coalescer = Coalescer(self.forecast_rows, config.max_batch_rows,
                                    lambda requests: metrics.coalesced.observe(requests))
        self.db_errors = database_errors()

    # -- keeping current ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="salesfc-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._probe.shutdown(wait=False, cancel_futures=True)
        self._coalescer.close()
        for store in [*self._retired, *([self.store] if self.store else [])]:
            _close(store)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # the refresher must outlive any one failure; the next round tries again
                log.exception("serve: refreshing the store and the model failed")
            wait = self.config.retry_after if self.store is None else self.config.reload_interval
            self._wake.wait(wait)
            self._wake.clear()

    def refresh(self) -> None:
        while self._retired:
            _close(self._retired.pop())
        # The model first: it only reads files, and says at once what is missing while a database may take a while.
        self._refresh_model()
        self._refresh_store()

    def _refresh_store(self) -> None:
        if self.store is not None:
            return
        try:
            store = feature_store.open_store(self.config, wait=False)
            store.service  # noqa: B018 - resolves the feature service: the registry answers, or this fails here
            _pooled(store)
        except Exception as err:  # a database still away, or a configuration to fix: both retried, both reported
            reason = f"the feature store does not open: {_first_line(err)}"
            if reason != self.store_problem:
                log.warning("serve: %s (retrying every %d s)", reason, self.config.retry_after)
            self.store_problem = reason
            self.metrics.database_up.set(0)
            return
        self.store, self.store_problem = store, None
        self.metrics.database_up.set(1)
        log.info("serve: feature store open (%s)", store.yaml)

    def drop_store(self, store: feature_store.Store, reason: str) -> None:
        """The database failed under a request: answer 503 until the refresher has reopened the store."""
        with self._lock:
            if self.store is not store:
                return  # another request already dropped it, or it was reopened since
            self.store = None
            self.store_problem = f"the online store does not answer: {reason}"
            self._retired.append(store)
        self.metrics.database_up.set(0)
        log.warning("serve: %s; answering 503 (Retry-After %d s) and reopening the store every %d s",
                    self.store_problem, self.config.retry_after, self.config.retry_after)

    def _refresh_model(self) -> None:
        workspace = self.config.workspace
        run_id = self.config.run_id or workspace.latest_run()
        if not run_id:
            todo = "`salesfc train`" if workspace.manifest.exists() else "`salesfc prep`, then `salesfc train`"
            self.model_problem = f"no finished run yet: {workspace.models / 'LATEST'} does not exist (run {todo})"
            return
        done = workspace.run_dir(run_id) / "training.json"
        if not done.exists():
            self.model_problem = f"model {run_id} has not finished training ({done} does not exist yet)"
            return
        try:
            stat = workspace.manifest.stat()
        except FileNotFoundError:
            self.model_problem = f"{workspace.manifest} does not exist (run `salesfc prep`)"
            return
        source = (run_id, stat.st_mtime_ns, stat.st_size, _stat(workspace.report_dir(run_id) / "metrics.json"))
        if (self.loaded and self.loaded.source == source) or source == self._failed_source:
            return
        tick = time.perf_counter()
        try:
            manifest = read_json(workspace.manifest)
            forecaster = infer.Forecaster(workspace.run_dir(run_id))
            infer.check_trained_on(run_id, forecaster, manifest)
        except (UserError, OSError, ValueError, KeyError, RuntimeError) as err:
            # Keep answering with what is loaded (if anything); its rows turn stale once the store moves on.
            self._failed_source = source
            self.model_problem = f"cannot load model {run_id}: {_first_line(err)}"
            log.error("serve: %s", self.model_problem)
            return
        loaded = Loaded(run_id, forecaster, pd.Timestamp(manifest["next_week"], tz="UTC"),
                        frozenset(int(key) for key in manifest["forecast_series"]), source,
                        *infer.recent_calibration(workspace, run_id, manifest["next_week"]))
        previous = self.loaded
        self.loaded, self.model_problem, self._failed_source = loaded, None, None
        self.metrics.model_loaded(loaded)
        log.info("serve: model %s loaded in %.2f s (forecast week %s, %d series)%s", run_id,
                 time.perf_counter() - tick, f"{loaded.week:%Y-%m-%d}", len(loaded.known),
                 f", replacing {previous.run_id}" if previous and previous.run_id != run_id else "")

    # -- answering ------------------------------------------------------------------------------------------------
    def current(self) -> tuple[Loaded, feature_store.Store]:
        loaded, store = self.loaded, self.store
        if loaded is None:
            raise Unavailable(self.model_problem or "no model loaded yet")
        if store is None:
            raise Unavailable(self.store_problem or "the feature store is not open yet")
        return loaded, store

    async def predict(self, pairs: list[tuple[int, int]], horizon: int = 1) -> dict:
        """Each pair's forecast of the week ``horizon`` - 1 weeks after next week (1: next week). A horizon beyond
        the loaded model's is refused (HorizonTooFar). The rows are forecast together with those of the requests
        that arrive meanwhile (``Coalescer``); the event loop awaits them instead of a thread blocking on them."""
        started = time.perf_counter()
        self._check_horizon(self.current()[0], horizon)
        done = await asyncio.wrap_future(self._coalescer.submit(pairs))
        return self._answer(pairs, horizon, done, started)

    @staticmethod
    def _check_horizon(loaded: "Loaded", horizon: int) -> None:
        if horizon > loaded.forecaster.horizon:
            raise HorizonTooFar(horizon, loaded.forecaster.horizon, loaded.run_id)

    def _answer(self, pairs: list[tuple[int, int]], horizon: int, done: "Forecasts", started: float) -> dict:
        loaded = done.loaded  # the model the rows were forecast with (one swapped in meanwhile may forecast less)
        self._check_horizon(loaded, horizon)
        week_text = f"{loaded.week:%Y-%m-%d}"
        target = (loaded.week + pd.Timedelta(weeks=horizon - 1)).date()
        step = horizon - 1
        results: list[dict] = []
        outcomes = {"ok": 0, "unknown_series": 0, "stale_features": 0}
        for (store_id, dept), row in zip(pairs, done.rows):
            result = {"store": store_id, "dept": dept, "week": target, "horizon": horizon, "predicted_sales": None,
                      "quantiles": None, "feature_timestamp": None, "error": None}
            if row is UNKNOWN:
                result["error"] = {"code": "unknown_series", "message": (
                    f"store {store_id} department {dept} is not one of the {len(loaded.known):,} store departments of "
                    f"the prepared data that sold in its last week: nothing to forecast from")}
            else:
                feature_week, bands = row
                if feature_week:
                    result["feature_timestamp"] = datetime.fromtimestamp(feature_week, timezone.utc)
                if bands is None:
                    result["error"] = {"code": "stale_features", "message": infer.stale_message(week_text, 1)}
                else:
                    result["predicted_sales"] = round(float(bands[0.5][step]), 2)
                    if len(bands) > 1:
                        result["quantiles"] = {quantile_name(q): round(float(values[step]), 2)
                                               for q, values in bands.items()}
            outcomes[result["error"]["code"] if result["error"] else "ok"] += 1
            results.append(result)
        for outcome, count in outcomes.items():
            if count:
                self.metrics.rows.labels(outcome).inc(count)
        self.metrics.stage.labels("total").observe(time.perf_counter() - started)
        return {"run_id": loaded.run_id, "week": loaded.week.date(), "horizon": horizon, "forecasts": results}

    def forecast_rows(self, pairs: list[tuple[int, int]]) -> "Forecasts":
        """Every pair's forecast, every horizon, with one online read and one pass of the network: per pair UNKNOWN
        (not a series of the prepared data) or (feature week in epoch seconds, 0 when the store has no row; its
        quantiles' dollars per horizon, None when the row is stale)."""
        loaded, store = self.current()  # this batch's model and store, whatever is swapped in meanwhile
        keys = store_dept([p[0] for p in pairs], [p[1] for p in pairs])
        known = np.fromiter((int(key) in loaded.known for key in keys), dtype=bool, count=len(keys))
        rows: list = [UNKNOWN] * len(pairs)
        asked = np.flatnonzero(known)
        if len(asked):
            tick = time.perf_counter()
            try:
                online, feature_week = infer.online_rows(store, keys[asked])
            except self.db_errors as err:
                self.drop_store(store, _first_line(err))
                raise Unavailable(self.store_problem) from err
            self.metrics.stage.labels("feature_read").observe(time.perf_counter() - tick)
            fresh = feature_week == int(loaded.week.timestamp())
            for i, week in zip(asked, feature_week):
                rows[i] = (int(week), None)
            if fresh.any():
                tick = time.perf_counter()
                bands = loaded.forecaster.predict_quantiles(online if fresh.all() else online.rows(fresh),
                                                            loaded.week, loaded.widen, loaded.level)
                self.metrics.stage.labels("model").observe(time.perf_counter() - tick)
                for row, i in enumerate(asked[fresh]):
                    rows[i] = (rows[i][0], {q: values[row] for q, values in bands.items()})
                self.metrics.feature_age.set(time.time() - float(feature_week[fresh].max()))
        return Forecasts(loaded, rows)

    def readiness(self) -> tuple[bool, dict]:
        """Ready when a model is loaded, the registry resolved the feature service, and the online store answers a
        one-row read within --ready-timeout."""
        state = {"model": self.loaded.run_id if self.loaded else None, "model_problem": self.model_problem,
                 "store": None if self.store is None else "open", "store_problem": self.store_problem}
        try:
            loaded, store = self.current()
        except Unavailable as err:
            state["reason"] = str(err)
            return False, state
        key = next(iter(loaded.known))
        future = self._probe.submit(infer.online_rows, store, np.array([key], dtype=np.int64))
        try:
            future.result(timeout=self.config.ready_timeout)
        except FutureTimeout:
            state["reason"] = f"the online store did not answer within {self.config.ready_timeout:g} s"
            return False, state
        except self.db_errors as err:
            self.drop_store(store, _first_line(err))
            state["reason"] = self.store_problem
            return False, state
        state["reason"] = None
        return True, state


def _stat(path) -> tuple | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app, so tests can build several)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.stage = Histogram("salesfc_predict_duration_seconds", "Time spent answering POST /predict, by stage: "
                               "feature_read (online store), model (preprocessing and network), total (the handler).",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.requests = Counter("salesfc_predict_requests", "POST /predict requests answered, by HTTP status.",
                                ["status"], registry=self.registry)
        self.coalesced = Histogram("salesfc_predict_coalesced_requests", "Requests forecast together in one online "
                                   "read and one pass of the network (those that arrived while it was busy).",
                                   buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.rows = Counter("salesfc_predict_rows", "Rows answered by POST /predict, by outcome (ok, "
                            "unknown_series, stale_features).", ["outcome"], registry=self.registry)
        self.model = Gauge("salesfc_model_info", "The loaded model: 1 for its run id and forecast week.",
                           ["run_id", "week"], registry=self.registry)
        self.swaps = Counter("salesfc_model_loads", "Models loaded (the first one and every swap).",
                             registry=self.registry)
        self.feature_age = Gauge("salesfc_feature_age_seconds", "Age of the newest online feature row used by the "
                                 "last forecast (now minus its week).", registry=self.registry)
        self.database_up = Gauge("salesfc_feature_store_up", "1 while the feature store is open and answering.",
                                 registry=self.registry)

    def model_loaded(self, loaded: Loaded) -> None:
        with warnings.catch_warnings():
            # Importing Feast turns on prometheus_client's multi-process mode, which warns that clear() does not
            # reach other processes' files; this registry is collected in-process, where clear() works.
            warnings.simplefilter("ignore", UserWarning)
            self.model.clear()
        self.model.labels(loaded.run_id, f"{loaded.week:%Y-%m-%d}").set(1)
        self.swaps.inc()


def create_app(config):
    """The FastAPI app of ``config`` (the serve command's settings). The store and the model load in the background
    once it starts, so /healthz answers at once and /readyz says what it waits for."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import BaseModel, ConfigDict, Field, model_validator

    limit = config.max_batch_rows

    class Row(BaseModel):
        model_config = ConfigDict(extra="forbid")
        store: int = Field(ge=1, description="Store number (Kaggle's Store).", examples=[1])
        dept: int = Field(ge=1, lt=DEPT_BASE, description="Department number (Kaggle's Dept).", examples=[1])

    class PredictRequest(BaseModel):
        """One store department (`store`, `dept`) or a batch (`rows`), not both."""

        model_config = ConfigDict(extra="forbid", json_schema_extra={
            "examples": [{"store": 1, "dept": 1}, {"rows": [{"store": 1, "dept": 1}, {"store": 2, "dept": 5}]}]})
        store: int | None = Field(None, ge=1, description="Store number, for a single-row request.")
        dept: int | None = Field(None, ge=1, lt=DEPT_BASE, description="Department number, for a single-row request.")
        rows: list[Row] | None = Field(None, min_length=1, description=f"A batch: at most {limit} rows "
                                       "(--max-batch-rows).")
        horizon: int = Field(1, ge=1, le=settings.MAX_HORIZON, description="Weeks ahead: 1 is next week, h the week h - 1 "
                             "weeks after it; at most the model's --horizon.")

        @model_validator(mode="after")
        def one_form(self):
            single = self.store is not None or self.dept is not None
            if self.rows is not None and single:
                raise ValueError("give either store and dept (one row) or rows (a batch), not both")
            if self.rows is None and (self.store is None or self.dept is None):
                missing = [name for name in ("store", "dept") if getattr(self, name) is None]
                raise ValueError(f"missing {' and '.join(missing)}: give store and dept (one row) or rows (a batch)")
            return self

        def pairs(self) -> list[tuple[int, int]]:
            if self.rows is None:
                return [(self.store, self.dept)]
            return [(row.store, row.dept) for row in self.rows]

    class RowError(BaseModel):
        code: Literal["unknown_series", "stale_features"]
        message: str

    class Forecast(BaseModel):
        store: int
        dept: int
        week: date = Field(description="The week forecast (its first day, as in the data).")
        horizon: int = Field(description="Weeks ahead of the data: 1 is next week.")
        predicted_sales: float | None = Field(description="Forecast weekly sales in dollars; null with an error.")
        quantiles: dict[str, float] | None = Field(
            default=None, description="Every quantile the model forecasts, in dollars ('p10', 'p50', 'p90'), when it "
            "was trained with --quantiles; predicted_sales is p50.")
        feature_timestamp: datetime | None = Field(description="The week of the online features used (UTC).")
        error: RowError | None = Field(description="Why this row has no forecast.")

    class PredictResponse(BaseModel):
        run_id: str = Field(description="The model's run (models/<run-id>/).")
        week: date = Field(description="Next week: the first week after the data, horizon 1.")
        horizon: int
        forecasts: list[Forecast]

    class Problem(BaseModel):
        detail: str

    metrics = Metrics()
    service = Service(config, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="salesfc", version=_version(), lifespan=lifespan,
                  description="Next week's sales forecast for store departments, from the Feast online store.")
    app.state.service = service

    @app.exception_handler(Unavailable)
    async def unavailable(_request: Request, err: Unavailable):
        return JSONResponse({"detail": str(err)}, status_code=503,
                            headers={"Retry-After": str(config.retry_after)})

    @app.exception_handler(HorizonTooFar)
    async def too_far(_request: Request, err: HorizonTooFar):
        return JSONResponse({"detail": [{"type": "less_than_equal", "loc": ["body", "horizon"], "msg": str(err),
                                         "input": err.asked}]}, status_code=422)

    class CountPredictions:
        """POST /predict answers by status. A plain ASGI middleware: Starlette's @app.middleware("http") passes every
        request through a task and a stream of its own, which cost about a millisecond a request here."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http" or scope["path"] != "/predict":
                return await self.inner(scope, receive, send)

            async def counted(message):
                if message["type"] == "http.response.start":
                    metrics.requests.labels(str(message["status"])).inc()
                await send(message)
            return await self.inner(scope, receive, counted)

    app.add_middleware(CountPredictions)

    @app.post("/predict", response_model=PredictResponse,
              responses={422: {"description": "Invalid request: the body names the field"},
                         503: {"model": Problem, "description": "No model yet or the database is away; see "
                               "Retry-After"}})
    async def predict(request: PredictRequest) -> dict:
        """Each row's forecast of next week (or, with `horizon`, of the week that many weeks ahead). A pair that is
        not a series of the prepared data, or whose online features are not of the forecast week, gets an `error`
        instead of a number."""
        pairs = request.pairs()
        if len(pairs) > limit:
            raise RequestValidationError([{
                "type": "too_long", "loc": ("body", "rows"), "input": None,
                "msg": f"{len(pairs)} rows is more than {limit}, the most one request may ask for "
                       "(--max-batch-rows): split the batch"}])
        return await service.predict(pairs, request.horizon)

    @app.get("/healthz")
    def healthz() -> dict:
        """The process answers (no dependency is consulted: a database outage must not restart the pod)."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        ready, state = service.readiness()
        return JSONResponse(state, status_code=200 if ready else 503,
                            headers={} if ready else {"Retry-After": str(config.retry_after)})

    @app.get("/metrics")
    def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _version() -> str:
    from salesfc import __version__

    return __version__


def app_from_environment():
    """The app for a worker process started by uvicorn (--workers > 1): settings from SALESFC_* variables."""
    import argparse

    return create_app(settings.Config("serve", settings.resolve(argparse.Namespace(), "serve")))


def run(config) -> int:
    import uvicorn

    if config.workers > 1:
        # Worker processes import the app afresh: they find the settings where any salesfc process does.
        for name, value in config.values().items():
            if value is not None:
                os.environ[settings.BY_NAME[name].env] = str(value)
        target = "salesfc.serve:app_from_environment"
    else:
        target = create_app(config)
    log.info("serve: listening on http://%s:%d (POST /predict, /docs, /healthz, /readyz, /metrics)", config.host,
             config.port)
    uvicorn.run(target, factory=config.workers > 1, host=config.host, port=config.port, workers=config.workers,
                access_log=False, log_level="warning", timeout_graceful_shutdown=10)
    return 0
