"""check: is this deployment healthy? The chart's `helm test` runs it; so can anyone, locally.

Each check prints one line, ``ok`` or ``FAIL`` with the reason; the exit status is 1 if any failed. Checks that
need what an earlier one found (the online store needs the registry) are reported as not run.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import torch

from salesfc import feature_store
from salesfc.baselines import NAIVE
from salesfc.errors import UserError
from salesfc.tables import DEPT_BASE
from salesfc.waiting import wait_for
from salesfc.workspace import read_json

log = logging.getLogger(__name__)


class Failed(Exception):
    pass


class Retry(Exception):
    """The service is not answering yet (no endpoint, 503, an older run loaded): worth asking again."""


def predict_problem(url: str, store: int, dept: int, run_id: str, timeout: float = 10.0) -> str:
    """POST /predict {store, dept} to the forecast service at ``url`` and check the answer: status 200, a finite
    forecast for that row, and ``run_id`` as the model. Returns what it saw; raises Retry for a service that is not
    ready yet and Failed for an answer that is wrong."""
    endpoint = url.rstrip("/") + "/predict"
    request = urllib.request.Request(endpoint, data=json.dumps({"store": store, "dept": dept}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    asked = f"POST {endpoint} {{store: {store}, dept: {dept}}}"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as err:
        # Connection refused or no DNS name yet: the Deployment is not ready (a Service without endpoints).
        raise Retry(f"{asked}: no answer ({getattr(err, 'reason', err)}); is serving.enabled and the serve "
                    f"Deployment ready?") from None
    if status == 503:
        # The service's own reason: no model yet, the database away.
        raise Retry(f"{asked}: 503 {text[:300]}")
    if status != 200:
        raise Failed(f"{asked}: HTTP {status}, expected 200: {text[:300]}")
    try:
        answer = json.loads(text)
        (row,) = answer["forecasts"]
        served_run = answer["run_id"]
    except (ValueError, KeyError, TypeError) as err:
        raise Failed(f"{asked}: 200 but not a forecast answer ({type(err).__name__}: {err}): {text[:300]}") from None
    if served_run != run_id:
        # A retrain finishes before the service's next look at models/LATEST: wait for the swap.
        raise Retry(f"{asked}: the service answers with model {served_run}, not {run_id}")
    if row.get("error"):
        raise Failed(f"{asked}: no forecast, {row['error'].get('code')}: {row['error'].get('message')}")
    value = row.get("predicted_sales")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Failed(f"{asked}: predicted_sales is {value!r}, not a number")
    return f"{asked} -> ${value:,.0f} for the week of {row.get('week')} from model {served_run}"


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
            week = pd.Timestamp(state["manifest_obj"]["next_week"], tz="UTC")
            prediction = state["forecaster"].predict(online, week)  # (rows, horizon)
        if not np.isfinite(prediction).all():
            raise Failed("the model predicts non-finite sales for online rows")
        ahead = f", {prediction.shape[1]} weeks ahead each" if prediction.shape[1] > 1 else ""
        return f"{len(prediction)} online rows predicted{ahead}, e.g. ${prediction[0, 0]:,.0f} next week"

    if config.serve_url:
        @check("serving", needs=("model", "manifest"))
        def _():
            key = int(state["manifest_obj"]["forecast_series"][0])
            seen: list[str] = []

            def answered() -> str | None:
                try:
                    seen.append(predict_problem(config.serve_url, key // DEPT_BASE, key % DEPT_BASE,
                                                state["run_id"]))
                    return None
                except Retry as err:
                    return str(err)

            wait_for(f"the forecast service at {config.serve_url}", answered, config.wait_timeout)
            return seen[-1]

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
