"""check: is this deployment healthy? The chart's `helm test` runs it; so can anyone, locally.

Each check prints one line, ``ok`` or ``FAIL`` with the reason; the exit status is 1 if any failed. Checks that
need what an earlier one found (the online store needs the registry) are reported as not run.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from salesfc import feature_store
from salesfc.baselines import NAIVE
from salesfc.errors import UserError
from salesfc.waiting import wait_for
from salesfc.workspace import read_json

log = logging.getLogger(__name__)


class Failed(Exception):
    pass


def run(config) -> int:
    workspace = config.workspace
    results: list[tuple[str, bool, str]] = []
    state: dict = {}

    def check(name: str, needs: tuple[str, ...] = ()):
        def decorate(fn):
            missing = [n for n in needs if n not in state]
            if missing:
                results.append((name, False, f"not run: needs {', '.join(missing)}"))
                return fn
            try:
                state[name] = fn()
                results.append((name, True, state[name] if isinstance(state[name], str) else "ok"))
            except (Failed, UserError) as err:
                results.append((name, False, str(err)))
            except Exception as err:  # a check must report, not crash
                results.append((name, False, f"{type(err).__name__}: {err}"))
            return fn
        return decorate

    @check("store")
    def _():
        state["store_obj"] = feature_store.open_store(config)
        store = state["store_obj"]
        if not store.uses_postgres:
            return f"{store.yaml} (local files, no database)"
        problems = [f"{e}: {reason}" for e in store.endpoints if (reason := e.unreachable())]
        if problems:
            raise Failed("; ".join(problems))
        return ", ".join(str(e) + " reachable" for e in store.endpoints)

    @check("registry", needs=("store",))
    def _():
        service = state["store_obj"].service
        views = [p.name for p in service.feature_view_projections]
        return f"feature service {service.name}: {', '.join(views)}"

    @check("manifest")
    def _():
        if not workspace.manifest.exists():
            raise Failed(f"{workspace.manifest} does not exist: prep has not finished")
        state["manifest_obj"] = read_json(workspace.manifest)
        m = state["manifest_obj"]
        return f"{m['rows']['labels']:,} weeks of sales, {m['series']:,} series, next week {m['next_week']}"

    @check("online store", needs=("registry", "manifest"))
    def _():
        keys = state["manifest_obj"]["forecast_series"][:20]
        online = pd.DataFrame(feature_store.online_features(state["store_obj"], keys))
        state["online_rows"] = online
        filled = online["sales_rolling_mean_4"].notna().sum()
        if filled == 0:
            raise Failed(f"no features online for {len(keys)} series that prep materialized: run `salesfc prep`")
        return f"{filled} of {len(keys)} sampled series have features online"

    @check("model")
    def _():
        from salesfc.infer import Forecaster, resolve_run

        run_id = resolve_run(config)
        state["run_id"] = run_id
        forecaster = Forecaster(workspace.run_dir(run_id))
        state["forecaster"] = forecaster
        parameters = sum(p.numel() for p in forecaster.network.parameters())
        return f"{run_id}: model.pt loads (weights only), {parameters:,} parameters, best epoch " \
               f"{forecaster.checkpoint['EPOCH'] + 1}"

    @check("prediction", needs=("model", "online store"))
    def _():
        online = state["online_rows"].copy()
        online["dept"] = online["store_dept"] % 1000
        with torch.no_grad():
            prediction = state["forecaster"].predict(online)
        if not np.isfinite(prediction).all():
            raise Failed("the model predicts non-finite sales for online rows")
        return f"{len(prediction)} online rows predicted, e.g. ${prediction[0]:,.0f}"

    @check("metrics", needs=("model",))
    def _():
        path = workspace.report_dir(state["run_id"]) / "metrics.json"
        wait_for(f"the evaluation of {state['run_id']}", lambda: None if path.exists() else
                 f"{path} does not exist yet (inference has not finished)", config.wait_timeout)
        result = read_json(path)
        model = result["model"]["wmae"]
        name, best = min(((n, result["baselines"][n]["wmae"]) for n in NAIVE), key=lambda item: item[1])
        limit = config.max_wmae_ratio * best
        if model > limit:
            raise Failed(f"model WMAE ${model:,.0f} is above {config.max_wmae_ratio:g} x the best naive baseline "
                         f"({name}, ${best:,.0f})")
        return f"model WMAE ${model:,.0f} <= {config.max_wmae_ratio:g} x best naive baseline ({name} ${best:,.0f})"

    failed = 0
    for name, ok, detail in results:
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    print(f"check: {len(results) - failed} of {len(results)} passed")
    return 1 if failed else 0
