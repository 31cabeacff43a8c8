"""The Spark engine (--feature-store spark): Feast's Spark offline store and materialization engine over the parquet
tables prep writes, in local mode (Spark inside the salesfc process) and on a Spark standalone cluster on this
machine (the chart's featureStore.offlineStore=spark: executors in worker JVMs). Both must read exactly what
DuckDB reads. scripts/setup.sh --test installs the Java they need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import one_error_line
from spark_cluster import standalone_cluster
from test_postgres import open_store

from salesfc import feature_store, tables
from salesfc.errors import UserError
from salesfc.tables import TIMESTAMP

pytestmark = pytest.mark.slow

SEED = ("--size", "tiny", "--data-seed", "5")


# Every Spark read runs in a process of its own, as salesfc's commands do: a Spark session is one per process and
# its JVM stays until the process ends, so reads in the test process would all share the first one's master.
READ = """
import sys
from pathlib import Path
import pandas as pd
sys.path.insert(0, sys.argv[1])
from test_postgres import open_store
from salesfc import feature_store
store = open_store(Path(sys.argv[2]), {}, "spark")
out = Path(sys.argv[3])
out.mkdir()
feature_store.historical_features(store).to_parquet(out / "whole.parquet")
for rank in range(2):
    feature_store.shard_features(store, rank, 2, reads=2).to_parquet(out / f"shard-{rank}.parquet")
since = pd.Timestamp(sys.argv[4])
feature_store.historical_features(store, since=since).to_parquet(out / "since.parquet")
keys = feature_store.read_labels(store)["store_dept"].drop_duplicates().head(25)
pd.DataFrame(feature_store.online_features(store, keys)).to_parquet(out / "online.parquet")
print("engine", store.location.engine)
source = store.feast.get_feature_view("sales_history_features").batch_source
print("source", type(source).__name__, source.path)
"""


@pytest.fixture(scope="module")
def duckdb_dir(tmp_path_factory, run_salesfc):
    workdir = tmp_path_factory.mktemp("duckdb")
    run_salesfc("prep", *SEED, "--workdir", str(workdir))
    return workdir


def spark_reads(run_salesfc, workdir, out, since, env=None):
    """prep through the Spark store (its sources, its materialization engine), then the reads of READ."""
    prep = run_salesfc("prep", *SEED, "--workdir", str(workdir), "--feature-store", "spark", env=env)
    assert "offline store spark" in prep.stdout
    read = subprocess.run([sys.executable, "-c", READ, str(Path(__file__).parent), str(workdir), str(out),
                           str(since)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert read.returncode == 0, read.stderr[-4000:]
    # The registry holds Spark sources over the very parquet files DuckDB reads.
    assert "engine spark" in read.stdout and "source SparkSource" in read.stdout
    assert f"{workdir / 'data' / 'sales_history.parquet'}" in read.stdout
    return {path.stem: pd.read_parquet(path) for path in out.glob("*.parquet")}


def assert_reads_match_duckdb(found, duckdb_dir):
    duckdb = open_store(duckdb_dir, {}, "local")
    whole = feature_store.historical_features(duckdb)
    assert len(whole) == len(feature_store.read_labels(duckdb))
    assert_same_rows(found["whole"], whole)
    # Training ranks: each of 2 shards in 2 reads, every label row exactly once, the values of the whole read.
    for rank in range(2):
        assert (tables.series_part(found[f"shard-{rank}"]["store_dept"], 2) == rank).all()
    joined = feature_store.in_table_order(pd.concat([found["shard-0"], found["shard-1"]], ignore_index=True))
    assert_same_rows(joined, feature_store.shard_features(duckdb, 0, 1))
    since = found["since"][TIMESTAMP].min()
    assert_same_rows(found["since"], whole[whole[TIMESTAMP] >= since].reset_index(drop=True))
    # The online rows the Spark materialization engine wrote are the ones the default engine writes.
    keys = feature_store.read_labels(duckdb)["store_dept"].drop_duplicates().head(25)
    want = pd.DataFrame(feature_store.online_features(duckdb, keys))
    pd.testing.assert_frame_equal(found["online"][list(want.columns)], want, check_dtype=False)
    assert want["sales_lag_1"].notna().sum() > 20  # the rows are there, not both empty


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want) and not got.duplicated(["store_dept", TIMESTAMP]).any()
    for column in want.columns:
        if want[column].dtype.kind in "fi" and got[column].dtype.kind in "fi":
            np.testing.assert_allclose(got[column].astype(float), want[column].astype(float), rtol=1e-6,
                                       equal_nan=True, err_msg=column)
        else:
            pd.testing.assert_series_equal(got[column], want[column], check_dtype=False, check_names=False)


def weeks_before_end(workdir, weeks: int):
    stamps = pd.read_parquet(workdir / "data" / "labels.parquet", columns=[TIMESTAMP])[TIMESTAMP]
    return stamps.drop_duplicates().sort_values().iloc[-weeks]


def test_spark_in_local_mode_reads_what_duckdb_reads(duckdb_dir, tmp_path, run_salesfc):
    found = spark_reads(run_salesfc, tmp_path / "spark", tmp_path / "reads", weeks_before_end(duckdb_dir, 3))
    assert_reads_match_duckdb(found, duckdb_dir)


def test_spark_on_a_standalone_cluster_reads_what_duckdb_reads(duckdb_dir, tmp_path, run_salesfc):
    """The chart's mode: the driver in the salesfc process, the executors in a worker JVM of a standalone cluster."""
    with standalone_cluster(tmp_path / "cluster", workers=1, cores=2, memory="2g") as cluster:
        found = spark_reads(run_salesfc, tmp_path / "spark", tmp_path / "reads", weeks_before_end(duckdb_dir, 3),
                            env={"SALESFC_SPARK_MASTER": cluster.url})
        worker_log = (tmp_path / "cluster" / "worker-0.log").read_text()
    assert "Asked to launch executor" in worker_log  # the work went to the cluster, not to a local Spark
    assert_reads_match_duckdb(found, duckdb_dir)


def test_the_pipeline_trains_and_forecasts_through_spark(tmp_path, run_salesfc):
    spark_dir = tmp_path / "spark"
    run_salesfc("prep", *SEED, "--workdir", str(spark_dir), "--feature-store", "spark")
    run_salesfc("train", "--workdir", str(spark_dir), "--feature-store", "spark", "--run-id", "spark",
                "--epochs", "2", "--members", "1", "--nproc-per-node", "2")
    training = json.loads((spark_dir / "models" / "spark" / "training.json").read_text())
    assert training["offline_store"] == "spark" and training["rows"]["train"] > 0
    run_salesfc("infer", "--workdir", str(spark_dir), "--feature-store", "spark")
    forecast = pd.read_parquet(spark_dir / "reports" / "spark" / "predictions.parquet")
    assert len(forecast) > 0 and forecast["predicted_sales"].notna().all()


def test_a_missing_java_or_pyspark_is_named(tmp_path, monkeypatch, run_salesfc):
    no_java = run_salesfc("prep", *SEED, "--workdir", str(tmp_path), "--feature-store", "spark",
                          env={"PATH": "/nonexistent", "JAVA_HOME": ""}, check=False)
    assert no_java.returncode == 1
    assert "needs Java 17 or later" in one_error_line(no_java.stderr)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyspark" else object())
    with pytest.raises(UserError, match=r"needs pyspark, a salesfc dependency: pip install 'pyspark>=4.0,<5'"):
        feature_store._check_spark(tmp_path / "feature_store.spark.yaml")
