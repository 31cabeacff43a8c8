"""prep: raw data -> features -> offline store -> `feast apply` -> materialize -> manifest.

Nothing is written until the raw data has been read, validated and engineered in memory, so bad input leaves what
was stored before untouched. The manifest (``data/prep.json``) is written last: the stages after this one wait for
it, and it is taken away first when the data is about to change, so nobody trains on a half-replaced store.
Running prep twice with the same settings writes the same tables and manifest and changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time

import pandas as pd

from salesfc import feature_store, features, progress
from salesfc.data import RawData
from salesfc.errors import UserError
from salesfc.tables import LABELS, SALES_HISTORY, STORE_CONTEXT
from salesfc.workspace import read_json, write_json

log = logging.getLogger(__name__)


def load_raw(config) -> RawData:
    if config.source == "kaggle":
        if not config.kaggle_dir:
            raise UserError("--source kaggle needs --kaggle-dir (the folder with train.csv, features.csv, "
                            "stores.csv)")
        if config.stores is not None:
            raise UserError("--stores (SALESFC_STORES) sizes synthetic data only; the Kaggle files have their own "
                            "stores: leave it unset")
        from salesfc.data import kaggle

        return kaggle.load(config.kaggle_dir)
    from salesfc.data import synthetic

    return synthetic.generate(config.size, config.data_seed, config.stores)


def fingerprint(frames: dict[str, pd.DataFrame]) -> str:
    digest = hashlib.sha256()
    for name in sorted(frames):
        digest.update(name.encode())
        digest.update(pd.util.hash_pandas_object(frames[name], index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def run(config) -> int:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str, logged: bool = False) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 2)
        clock = now
        if not logged:
            log.info("%s done in %.1f s", stage, timings[stage])

    with progress.stage("reading the raw data"):  # the Kaggle CSVs, or generating full-size data: seconds
        raw = load_raw(config)
    lap("raw data", logged=True)
    engineered = features.engineer(raw)
    frames = {SALES_HISTORY: engineered.sales_history, STORE_CONTEXT: engineered.store_context,
              LABELS: engineered.labels}
    lap("features")
    store = feature_store.open_store(config)
    lap("open store")

    workspace = config.workspace
    workspace.data.mkdir(parents=True, exist_ok=True)
    manifest = {
        "source": raw.source,
        "has_signal": raw.has_signal,
        "first_week": f"{engineered.first_week:%Y-%m-%d}",
        "last_week": f"{engineered.last_week:%Y-%m-%d}",
        "next_week": f"{engineered.next_week:%Y-%m-%d}",
        "rows": {name: len(frame) for name, frame in frames.items()},
        "series": int(engineered.labels["store_dept"].nunique()),
        "forecast_series": [int(key) for key in engineered.forecast_series],
        "offline_store": store.location.engine,
        "fingerprint": fingerprint(frames),
        "data_id": config.data_id,
    }
    previous = read_json(workspace.manifest) if workspace.manifest.exists() else None
    if previous != manifest and workspace.manifest.exists():
        workspace.manifest.unlink()  # the data is about to change: later stages must wait for the new manifest
    with progress.stage(f"writing the offline store ({store.location.engine})"):
        feature_store.write_offline_tables(store, frames)
    lap("offline store", logged=True)
    objects = feature_store.load_definitions(config, store)
    applied = feature_store.apply(store, objects)
    if applied["removed"]:
        log.info("removed from the registry (no longer defined): %s", ", ".join(applied["removed"]))
    lap("feast apply")
    with progress.stage("materializing the latest week into the online store"):  # 6-16 s at full size
        feature_store.materialize(store, engineered.first_week, engineered.next_week + pd.Timedelta(days=1))
    lap("materialize", logged=True)
    write_json(workspace.manifest, manifest)

    print(f"prep: {manifest['rows'][LABELS]:,} weeks of sales in {manifest['series']:,} series "
          f"({raw.source}), {manifest['first_week']} to {manifest['last_week']}")
    print(f"prep: offline store {store.location.engine} ({feature_store.yaml_file(config)}), "
          f"{len(applied['applied'])} Feast objects applied, online store holds next week "
          f"({manifest['next_week']}) for {len(manifest['forecast_series']):,} series")
    print(f"prep: manifest {workspace.manifest}; timings " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return 0
