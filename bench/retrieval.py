"""Feature retrieval: the full-size training set through Feast's DuckDB and PostgreSQL offline stores, beside
the same point-in-time join done directly in pandas; and online reads of one store department.

Each path returns every label row with its features as of that week (the feature service: two feature views and
two on-demand views). The pandas reference does the two as-of joins (merge_asof, backward, within the views'
TTL) without the on-demand views; its values must equal Feast's, and every path must return exactly one row per
entity row.

    python bench/retrieval.py [--size full] [--stores N] [--online-reads 2000] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from common import CACHE, machine, prepared, salesfc, table  # noqa: E402

from salesfc import cli, feature_store, settings, tables  # noqa: E402

TTL = pd.Timedelta(days=6)  # feature_repo/definitions.py


def store_config(workdir: Path, kind: str) -> settings.Config:
    """train's settings as its command line resolves them: these flags, then SALESFC_* (the server's, for
    PostgreSQL)."""
    args = cli.build_parser().parse_args(["train", "--workdir", str(workdir), "--feature-store", kind])
    return settings.Config("train", settings.resolve(args, "train"))


def timed_retrieval(config, read=None) -> tuple[float, pd.DataFrame, int]:
    """(seconds, frame, entity rows) of one read of every label row: salesfc's (``historical_features``, which
    raises unless exactly one row per entity row) or ``read(store, labels)``. One small read of the last week
    first, so no timed path pays for the first query's set-up."""
    store = feature_store.open_store(config)
    labels = feature_store.read_labels(store)
    feature_store.historical_features(store, since=labels[tables.TIMESTAMP].max())
    tick = time.perf_counter()
    frame = read(store, labels) if read else feature_store.historical_features(store)
    return time.perf_counter() - tick, frame, len(labels)


def feast_on_demand(store, labels: pd.DataFrame) -> pd.DataFrame:
    """The same read with Feast applying the on-demand views itself (python mode: the whole joined table as Python
    lists), the path salesfc's own application of them replaces."""
    return store.feast.get_historical_features(entity_df=labels, features=store.service).to_df()


def pandas_reference(workdir: Path) -> tuple[float, pd.DataFrame]:
    data = workdir / "data"
    labels = pd.read_parquet(data / f"{tables.LABELS}.parquet")
    history = pd.read_parquet(data / f"{tables.SALES_HISTORY}.parquet")
    context = pd.read_parquet(data / f"{tables.STORE_CONTEXT}.parquet")
    tick = time.perf_counter()
    ts = tables.TIMESTAMP
    labels = labels.sort_values(ts, kind="stable")
    if "store" not in labels:
        labels = labels.assign(store=tables.split_store_dept(labels["store_dept"])[0])
    frame = pd.merge_asof(labels, history.drop(columns=["store"], errors="ignore").sort_values(ts), on=ts,
                          by="store_dept", direction="backward", tolerance=TTL)
    frame = pd.merge_asof(frame, context.sort_values(ts), on=ts, by="store", direction="backward", tolerance=TTL)
    return time.perf_counter() - tick, frame


def compare(feast_frame: pd.DataFrame, reference: pd.DataFrame) -> str:
    keys = ["store_dept", tables.TIMESTAMP]
    merged = feast_frame.merge(reference, on=keys, suffixes=("", "__ref"), validate="one_to_one")
    columns = [c for c in reference.columns
               if c + "__ref" in merged.columns and pd.api.types.is_numeric_dtype(reference[c])]
    worst = max(float(np.nanmax(np.abs(merged[c].to_numpy(float) - merged[c + "__ref"].to_numpy(float)),
                                initial=0)) for c in columns)
    same_nulls = all((merged[c].isna() == merged[c + "__ref"].isna()).all() for c in columns)
    return f"{len(columns)} columns, largest difference {worst:g}, same missing values: {same_nulls}"


def online_latency(config, reads: int) -> tuple[float, float]:
    store = feature_store.open_store(config)
    keys = feature_store.read_labels(store)["store_dept"].unique()
    rng = np.random.default_rng(0)
    feature_store.online_features(store, keys[:1])  # resolve the service, open the database
    samples = []
    for key in rng.choice(keys, reads):
        tick = time.perf_counter()
        feature_store.online_features(store, [key])
        samples.append(time.perf_counter() - tick)
    return float(np.percentile(samples, 50)) * 1e3, float(np.percentile(samples, 99)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="full")
    parser.add_argument("--online-reads", type=int, default=2000)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--stores", type=int, help="synthetic stores (default: the size's 45); 450 is 10x")
    args = parser.parse_args()

    print(f"feature retrieval on {machine()}")
    workdir = prepared(args.size, args.stores)
    rows = []
    reference_seconds, reference = pandas_reference(workdir)
    local = store_config(workdir, "local")
    seconds, frame, entity_rows = timed_retrieval(local)
    rows.append(["Feast, DuckDB offline store", seconds, entity_rows, len(frame), compare(frame, reference)])
    feast_seconds = timed_retrieval(local, feast_on_demand)[0]
    rows.append(["  the same, on-demand views applied by Feast", feast_seconds, entity_rows, len(frame),
                 f"{feast_seconds / seconds:.1f}x the time of the row above"])
    online = {"SQLite": online_latency(local, args.online_reads)}
    if not args.skip_postgres:
        from private_postgres import private_server

        with private_server() as server:
            server.create_database("bench")
            env = server.env("bench")
            pg_workdir = CACHE / f"{args.size}-postgres"
            prep_seconds = salesfc("prep", "--size", args.size, "--feature-store", "postgres", "--workdir",
                                   str(pg_workdir), env=env)
            print(f"(prep into PostgreSQL: {prep_seconds:.0f} s)")
            os.environ.update(env)
            pg = store_config(pg_workdir, "postgres")
            seconds, frame, entity_rows = timed_retrieval(pg)
            rows.append(["Feast, PostgreSQL offline store", seconds, entity_rows, len(frame),
                         compare(frame, reference)])
            online["PostgreSQL"] = online_latency(pg, args.online_reads)
    rows.append(["pandas merge_asof (reference, joins only)", reference_seconds, len(reference), len(reference),
                 ""])
    print(table([[r[0], f"{r[1]:.1f}", r[2], r[3], r[4]] for r in rows],
                ["path", "seconds", "entity rows", "rows returned", "against the reference"]))
    print("goal: DuckDB < 10 s, PostgreSQL < 30 s, exactly one row per entity row")
    for name, (p50, p99) in online.items():
        print(f"online read of one store department with the on-demand views ({name} online store, "
              f"{args.online_reads} reads): p50 {p50:.2f} ms, p99 {p99:.2f} ms (goal p99 < 10 ms)")


if __name__ == "__main__":
    main()
