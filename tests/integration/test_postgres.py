"""The same pipeline on a real PostgreSQL server: registry, offline store and online store in the database."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from salesfc import feature_store, settings, tables
from salesfc.cli import build_parser
from salesfc.data import synthetic
from salesfc.tables import TIMESTAMP, store_dept

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def colliding_csvs(folder):
    """Tiny data relabelled so that (store 1, dept 12) and (store 11, dept 2) both exist: the pair that Feast's
    PostgreSQL offline store confuses when a view is keyed on (store, dept) ("1"+"12" == "11"+"2")."""
    raw = synthetic.generate("tiny", seed=3)
    for table in (raw.sales, raw.external, raw.stores):
        table.loc[table["store"] == 4, "store"] = 11
    raw.sales.loc[(raw.sales["store"] == 1) & (raw.sales["dept"] == 1), "dept"] = 12
    assert {(1, 12), (11, 2)} <= set(zip(raw.sales["store"], raw.sales["dept"]))
    synthetic.to_kaggle_csvs(raw, folder)
    return raw


def open_store(workdir, environ, feature_store_name):
    import os

    os.environ.update(environ)
    args = build_parser().parse_args(["infer", "--workdir", str(workdir), "--feature-store", feature_store_name])
    return feature_store.open_store(settings.Config("infer", settings.resolve(args, "infer")))


def pandas_reference(workdir) -> pd.DataFrame:
    """The point-in-time join done directly in pandas from the parquet tables: what Feast must return."""
    labels = pd.read_parquet(workdir / "data" / "labels.parquet")
    history = pd.read_parquet(workdir / "data" / "sales_history.parquet").drop(columns=["store", "dept"])
    context = pd.read_parquet(workdir / "data" / "store_context.parquet")
    out = labels.merge(history, on=["store_dept", TIMESTAMP], how="left")
    return out.merge(context, on=["store", TIMESTAMP], how="left")


def test_postgres_store_matches_duckdb_and_pandas(pg, tmp_path, run_salesfc):
    server, database = pg
    env = server.env(database)
    csvs = tmp_path / "csv"
    colliding_csvs(csvs)
    source = ("--source", "kaggle", "--kaggle-dir", str(csvs))
    run_salesfc("prep", *source, "--workdir", str(tmp_path / "pg"), "--feature-store", "postgres", env=env)
    run_salesfc("prep", *source, "--workdir", str(tmp_path / "local"))

    with server.connect(database) as conn:
        names = {name for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in names}
    assert {"salesfc_sales_history", "salesfc_store_context", "salesfc_labels"} <= names
    assert any("registry" in t or "feature_views" in t for t in names)  # the SQL registry lives here too

    pg_store = open_store(tmp_path / "pg", env, "postgres")
    from_pg = feature_store.historical_features(pg_store)
    labels = pd.read_parquet(tmp_path / "local" / "data" / "labels.parquet")
    assert len(from_pg) == len(labels)  # exactly one training row per entity row
    assert not from_pg.duplicated(["store_dept", TIMESTAMP]).any()
    from_duckdb = feature_store.historical_features(open_store(tmp_path / "local", {}, "local"))
    reference = pandas_reference(tmp_path / "local")
    reference = reference.sort_values([TIMESTAMP, "store_dept"]).reset_index(drop=True)
    for column in ("sales_lag_1", "sales_lag_52", "sales_rolling_std_12", "temperature", "store_type",
                   "weekly_sales", "markdown3"):
        pd.testing.assert_series_equal(from_pg[column], from_duckdb[column], check_dtype=False, check_names=False)
        pd.testing.assert_series_equal(from_pg[column], reference[column], check_dtype=False, check_names=False)
    for column in ("sales_velocity", "seasonal_sine", "markdown_momentum"):  # on-demand views, both stores
        np.testing.assert_allclose(from_pg[column].astype(float), from_duckdb[column].astype(float), equal_nan=True)
    # An evaluation reads its weeks only (`since`): the same rows and values as the whole read, on both stores.
    since = from_duckdb[TIMESTAMP].drop_duplicates().sort_values().iloc[-5]
    whole = from_duckdb[from_duckdb[TIMESTAMP] >= since].reset_index(drop=True)
    for recent in (feature_store.historical_features(pg_store, since=since),
                   feature_store.historical_features(open_store(tmp_path / "local", {}, "local"), since=since)):
        assert len(recent) == len(whole) and recent[TIMESTAMP].min() == since
        for column in ("store_dept", "sales_lag_1", "temperature", "sales_velocity"):
            np.testing.assert_allclose(recent[column].astype(float), whole[column].astype(float), equal_nan=True)
    # Shards (training ranks), each read in two parts: every row once, in the shard numpy's hash gives its series
    # (PostgreSQL computes it in SQL), the values of the whole read (float32 features: the network's precision).
    local_store = open_store(tmp_path / "local", {}, "local")
    for store, whole in ((pg_store, from_pg), (local_store, from_duckdb)):
        shards = [feature_store.shard_features(store, rank, 3, reads=2) for rank in range(3)]
        for rank, shard in enumerate(shards):
            assert (tables.series_part(shard["store_dept"], 3) == rank).all()
            assert shard["sales_lag_1"].dtype == np.float32 and shard["weekly_sales"].dtype == np.float64
        joined = pd.concat(shards).sort_values([TIMESTAMP, "store_dept"]).reset_index(drop=True)
        assert len(joined) == len(whole) and not joined.duplicated(["store_dept", TIMESTAMP]).any()
        np.testing.assert_array_equal(joined["weekly_sales"], whole["weekly_sales"])
        for column in ("store_dept", "sales_lag_1", "temperature", "sales_velocity", "markdown3"):
            np.testing.assert_allclose(joined[column].astype(float), whole[column].astype(float), rtol=1e-6,
                                       equal_nan=True, err_msg=column)

    # The colliding pair kept their own histories.
    for store, dept in ((1, 12), (11, 2)):
        mine = from_pg[from_pg["store_dept"] == store_dept(store, dept)]
        truth = reference[reference["store_dept"] == store_dept(store, dept)]
        np.testing.assert_allclose(mine["sales_lag_1"], truth["sales_lag_1"], equal_nan=True)

    # Online: next week's row for every active series.
    manifest = json.loads((tmp_path / "pg" / "data" / "prep.json").read_text())
    online = feature_store.online_features(pg_store, manifest["forecast_series"][:5], timestamps=True)
    week = int(pd.Timestamp(manifest["next_week"], tz="UTC").timestamp())
    assert all(ts == week for ts in online["sales_lag_1__ts"])
    assert all(value is not None for value in online["demand_stability_score"])

    # prep again: the same tables, nothing doubled.
    run_salesfc("prep", *source, "--workdir", str(tmp_path / "pg"), "--feature-store", "postgres", env=env)
    with server.connect(database) as conn:
        assert {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in names} == counts


def test_train_infer_check_on_postgres(pg, tmp_path, run_salesfc):
    server, database = pg
    env = server.env(database)
    common = ("--workdir", str(tmp_path), "--feature-store", "postgres")
    run_salesfc("prep", "--size", "tiny", *common, env=env)
    run_salesfc("train", *common, "--run-id", "on-pg", "--epochs", "8", env=env)
    training = json.loads((tmp_path / "models" / "on-pg" / "training.json").read_text())
    assert training["offline_store"] == "postgres"
    run_salesfc("infer", *common, "--run-id", "on-pg", "--plot-series", "0", env=env)
    result = run_salesfc("check", *common, "--max-wmae-ratio", "10", env=env)
    assert f"ok   store: PostgreSQL salesfc@{server.host}:{server.port}/{database} reachable" in result.stdout
    assert "check: 7 of 7 passed" in result.stdout
    wrong = run_salesfc("check", *common, env={**env, "SALESFC_PG_PASSWORD": "wrong"}, check=False)
    assert wrong.returncode == 1 and "password authentication failed" in wrong.stdout + wrong.stderr
