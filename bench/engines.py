"""Offline-store engines side by side (issue 13): the whole training set read through Feast by DuckDB (the
default), Spark (Feast's Spark offline store: `--feature-store spark`) in local mode and on a Spark standalone
cluster on this machine (a master and one worker: the chart's mode, executors in another JVM), and Ray (Feast's Ray
offline store, local mode; only when `ray` is importable: salesfc does not install it), on the same prepared
parquet tables at 1x and 10x the stores.

Each engine reads in its own fresh process, as backtest reads (feature_store.shard_features: every series in reads
of the default --rows-per-read, float32 features), after one small warm-up read of the last week; the process's
wall time, the read alone, and the peak memory of its largest process (Spark's JVM is a child of the reader) are
measured as bench/scale.py measures its stages; on the cluster, the master's and the worker's processes (the
executor is the worker's child) are sampled the same way beside the reader's. Each engine's frame is checked against DuckDB's (every label row
once, the same sums of every feature column).

    python bench/engines.py [--sizes 1,10] [--engines duckdb,spark,spark-cluster,ray] [--timeout 900]
    python bench/engines.py --sizes 1 --engines duckdb,ray --timeout 300
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, REPO, cli_env, machine, salesfc, table  # noqa: E402
from scale import GIB, SAMPLE_S, STORES_1X, read_result, run_measured, sample  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from spark_cluster import standalone_cluster  # noqa: E402

ENGINES = ("duckdb", "spark", "spark-cluster", "ray")
WORKER_MEMORY = "6g"  # what the one worker offers its executor (the machine has 24 GiB)
# Feast's Ray offline store in local mode, as its documentation configures it; salesfc ships no Ray profile.
RAY_YAML = """project: salesfc
provider: local
registry:
  registry_type: file
  path: registry.db
offline_store:
  type: ray
  storage_path: {storage}
online_store:
  type: sqlite
  path: online_store.db
entity_key_serialization_version: 3
"""


def prepared(multiple: int) -> Path:
    """bench/scale.py's workdir of this size (prepared with the DuckDB store), prepared here if it is missing."""
    stores = STORES_1X * multiple
    workdir = CACHE / "scale" / f"full-{stores}-stores"
    if not (workdir / "data" / "labels.parquet").is_file():
        salesfc("prep", "--size", "full", "--stores", str(stores), "--workdir", str(workdir))
    return workdir


def engine_workdir(engine: str, data: Path, multiple: int) -> tuple[Path, str]:
    """(workdir, --feature-store) of an engine over the same parquet tables: the data folder linked, a registry of
    its own (Spark's names Spark sources; it is applied in the reader's process, before the clock starts)."""
    if engine == "duckdb":
        return data, "local"
    workdir = CACHE / "engines" / f"{multiple}x-{engine}"
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "feast").mkdir(parents=True)
    (workdir / "data").symlink_to((data / "data").resolve())
    if engine.startswith("spark"):
        return workdir, "spark"
    shutil.copy(data / "feast" / "registry.db", workdir / "feast")  # file sources, which Ray's store reads
    yaml = workdir / "feature_store.ray.yaml"
    yaml.write_text(RAY_YAML.format(storage=workdir / "ray-storage"))
    return workdir, str(yaml)


def read(workdir: Path, store_name: str) -> None:
    """The reader's process: one JSON line with the read's seconds and the frame's rows and column sums."""
    from retrieval import store_config, timed_retrieval

    from salesfc import feature_store, settings

    config = store_config(workdir, store_name)
    if store_name == "spark":
        store = feature_store.open_store(config)
        feature_store.apply(store, feature_store.load_definitions(config, store))
    rows_per_read = settings.Config.defaults("train").rows_per_read

    def whole_in_reads(store, _labels):
        rows = int(feature_store.label_counts(store).sum())
        return feature_store.shard_features(store, 0, 1, feature_store.reads_per_shard(rows, 1, rows_per_read))

    seconds, frame, entity_rows = timed_retrieval(config, whole_in_reads)
    numeric = frame.select_dtypes("number")
    print(json.dumps({"read_seconds": seconds, "entity_rows": entity_rows, "rows": len(frame),
                      "unique": int((~frame.duplicated(["store_dept", "event_timestamp"])).sum()),
                      "sums": {c: float(np.nansum(numeric[c].to_numpy(dtype=np.float64))) for c in numeric}}))


def same_values(found: dict, reference: dict) -> str:
    if not found or not reference:
        return "-"
    if found["rows"] != reference["rows"] or found["unique"] != found["rows"]:
        return f"no: {found['rows']:,} rows, {found['unique']:,} distinct"
    differ = [c for c, v in reference["sums"].items() if not np.isclose(found["sums"].get(c, np.nan), v, rtol=1e-6)]
    return "yes" if not differ else f"no: {', '.join(differ[:3])}"


@contextlib.contextmanager
def cluster_for(engine: str, folder: Path):
    """(environment, peak()) of an engine's read: for spark-cluster, a standalone cluster started for it (not timed)
    and the largest peak of its processes while the read ran; for the others, nothing."""
    if engine != "spark-cluster":
        yield {}, lambda: 0
        return
    shutil.rmtree(folder, ignore_errors=True)
    with standalone_cluster(folder, workers=1, cores=2, memory=WORKER_MEMORY) as cluster:
        peaks: dict = {}
        done = threading.Event()

        def watch():
            roots = [psutil.Process(p.pid) for p in cluster.processes]
            while not done.is_set():
                for root in roots:
                    sample(root, peaks)
                done.wait(SAMPLE_S)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield {"SALESFC_SPARK_MASTER": cluster.url}, lambda: max(peaks.values(), default=0)
        finally:
            done.set()
            watcher.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10", help="multiples of the full size's 45 stores")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--timeout", type=float, default=900, help="stop an engine's read after this many seconds")
    parser.add_argument("--read", nargs=2, metavar=("WORKDIR", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        return read(Path(args.read[0]), args.read[1])

    engines = [e for e in args.engines.split(",") if e]
    if "ray" in engines and importlib.util.find_spec("ray") is None:
        print("ray: not installed (salesfc does not depend on it); `pip install 'ray[data]'` to measure it")
        engines.remove("ray")
    print(f"engines on {machine()}; each read in its own process, limit {args.timeout:g} s", flush=True)
    rows, results = [], {}
    for multiple in sorted({int(s) for s in args.sizes.split(",")}):
        data = prepared(multiple)
        for engine in engines:
            workdir, store_name = engine_workdir(engine, data, multiple)
            log = CACHE / "engines" / "logs" / f"{multiple}x-{engine}.log"
            command = [sys.executable, str(Path(__file__).resolve()), "--read", str(workdir), store_name]
            with cluster_for(engine, CACHE / "engines" / f"{multiple}x-cluster") as (env, cluster_peak):
                m = run_measured(command, cli_env(env), log, args.timeout)
            m.peak_bytes = max(m.peak_bytes, cluster_peak())
            found = results[multiple, engine] = read_result(log) if m.code == 0 else {}
            print(f"  {multiple}x {engine}: {m.seconds:.1f} s, largest process {m.peak_bytes / GIB:.2f} GiB, "
                  f"{m.outcome}", flush=True)
            if m.code and not m.stopped:
                print("\n".join(log.read_text().splitlines()[-10:]))
            rows.append([f"{multiple}x ({STORES_1X * multiple:,} stores)", engine,
                         f"{found['read_seconds']:.1f}" if found else "-",
                         f"{'> ' if m.stopped else ''}{m.seconds:.1f}", f"{m.peak_bytes / GIB:.2f}",
                         f"{found['rows']:,}" if found else "-",
                         same_values(found, results.get((multiple, "duckdb"), {})) if engine != "duckdb" else "-",
                         m.outcome])
    print(table(rows, ["size", "engine", "read s", "process s", "largest process GiB", "rows", "same as duckdb",
                       "outcome"]))
    for (multiple, engine), found in results.items():
        base = results.get((multiple, "duckdb"))
        if engine != "duckdb" and found and base:
            print(f"{multiple}x: {engine} read {found['read_seconds'] / base['read_seconds']:.1f}x DuckDB's time")


if __name__ == "__main__":
    main()
