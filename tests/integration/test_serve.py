"""`salesfc serve` over real HTTP: a uvicorn process on a prepared tiny workspace with a trained run, as a client
sees it (SQLite online store; the PostgreSQL outage test at the end uses the real server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from processes import free_port, stop

pytestmark = pytest.mark.slow

RUN = "serve-a"


class Server:
    """`salesfc serve` in a subprocess on 127.0.0.1, and a small JSON client for it."""

    def __init__(self, workdir: Path, *flags: str, env: dict | None = None):
        self.port = free_port()
        self.log = workdir.parent / f"serve-{self.port}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SALESFC_")}
        full_env.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "salesfc", "serve", "--workdir", str(workdir), "--port", str(self.port),
             "--reload-interval", "0.5", "--retry-after", "1", *flags],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=full_env)
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert self.process.poll() is None, f"serve exited {self.process.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"serve did not answer /healthz in 120 s:\n{self.output()}"
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text()

    def request(self, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict | str, Message]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, text, headers = response.status, response.read().decode(), response.headers
        except urllib.error.HTTPError as err:
            status, text, headers = err.code, err.read().decode(), err.headers
        try:
            return status, json.loads(text), headers
        except ValueError:
            return status, text, headers

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, body=None, raw: bytes | None = None):
        return self.request("POST", "/predict", body, raw)

    def wait_until(self, what: str, condition, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{self.output()[-3000:]}"
            time.sleep(0.2)

    def ready(self):
        return self.wait_until("ready", lambda: self.get("/readyz")[0] == 200)

    def stop(self) -> None:
        stop(self.process)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, run_salesfc) -> Path:
    """Tiny data prepared in the local store (SQLite online store) and one quick training run."""
    workdir = tmp_path_factory.mktemp("serve") / "work"
    run_salesfc("prep", "--size", "tiny", "--workdir", str(workdir))
    run_salesfc("train", "--workdir", str(workdir), "--run-id", RUN, "--epochs", "2", "--members", "1")
    return workdir


@pytest.fixture(scope="module")
def server(workspace):
    server = Server(workspace, "--max-batch-rows", "50")
    server.ready()
    yield server
    server.stop()


def manifest(workdir: Path) -> dict:
    return json.loads((workdir / "data" / "prep.json").read_text())


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.test")
    tmp.write_text(text)
    os.replace(tmp, path)


def batch_forecast(workdir: Path) -> dict[tuple[int, int], float]:
    """What `salesfc infer` forecasts for next week, computed by its own code in this process."""
    from salesfc import feature_store, infer, settings

    config = settings.Config.defaults("infer", workdir=str(workdir))
    store = feature_store.open_store(config, wait=False)
    frame = infer.next_week(store, infer.Forecaster(config.workspace.run_dir(RUN)), manifest(workdir))
    frame = frame[frame["horizon"] == 1]  # the default model forecasts 13 weeks: next week is horizon 1
    return {(int(s), int(d)): float(p) for s, d, p in zip(frame["store"], frame["dept"], frame["predicted_sales"])}


def test_forecasts_are_the_batch_forecasts(server, workspace):
    expected = batch_forecast(workspace)
    pairs = list(expected)[:50]
    status, body, _ = server.post({"rows": [{"store": s, "dept": d} for s, d in pairs]})
    assert status == 200, body
    week = manifest(workspace)["next_week"]
    assert body["run_id"] == RUN and body["week"] == week
    assert [(row["store"], row["dept"]) for row in body["forecasts"]] == pairs
    for row in body["forecasts"]:
        assert row["error"] is None and row["week"] == week
        assert row["feature_timestamp"].startswith(week)
        assert row["predicted_sales"] == pytest.approx(expected[(row["store"], row["dept"])], abs=0.011)
    store, dept = pairs[0]
    status, single, _ = server.post({"store": store, "dept": dept})
    assert status == 200 and len(single["forecasts"]) == 1
    assert single["forecasts"][0]["predicted_sales"] == pytest.approx(expected[pairs[0]], abs=0.011)


@pytest.mark.parametrize("body, location, words", [
    ({"store": 1}, ["body"], "missing dept"),
    ({"dept": 3}, ["body"], "missing store"),
    ({}, ["body"], "missing store and dept"),
    ({"store": "one", "dept": 1}, ["body", "store"], "integer"),
    ({"store": 0, "dept": 1}, ["body", "store"], "greater than or equal to 1"),
    ({"store": 1, "dept": 1000}, ["body", "dept"], "less than 1000"),
    ({"store": 1, "dept": 1, "rows": [{"store": 1, "dept": 1}]}, ["body"], "not both"),
    ({"rows": []}, ["body", "rows"], "at least 1"),
    ({"rows": [{"store": 1, "dpt": 2}]}, ["body", "rows", 0, "dpt"], "Extra inputs"),
    ({"rows": [{"store": 1, "dept": 2}, {"store": 1}]}, ["body", "rows", 1, "dept"], "required"),
    ({"rows": [{"store": 1, "dept": 1}] * 51}, ["body", "rows"], "more than 50"),
])
def test_bad_requests_get_422_naming_the_field(server, body, location, words):
    status, answer, _ = server.post(body)
    assert status == 422, answer
    assert any(error["loc"] == location and words in error["msg"] for error in answer["detail"]), answer


def test_a_body_that_is_not_json_gets_422(server):
    status, answer, _ = server.post(raw=b"store=1&dept=1")
    assert status == 422 and answer["detail"][0]["type"] == "json_invalid", answer


def test_unknown_pairs_get_an_error_of_their_own(server, workspace):
    known = manifest(workspace)["forecast_series"][0]
    status, body, _ = server.post({"rows": [{"store": 1, "dept": 999}, {"store": known // 1000, "dept": known % 1000},
                                            {"store": 999, "dept": 1}]})
    assert status == 200, body
    unknown, good, other = body["forecasts"]
    for row in (unknown, other):
        assert row["predicted_sales"] is None and row["feature_timestamp"] is None
        assert row["error"]["code"] == "unknown_series" and f"department {row['dept']}" in row["error"]["message"]
    assert good["error"] is None and good["predicted_sales"] is not None


def test_probes_metrics_and_the_api_description(server):
    assert server.get("/healthz")[:2] == (200, {"status": "ok"})
    status, ready, _ = server.get("/readyz")
    assert status == 200 and ready["model"] == RUN and ready["reason"] is None
    server.post({"store": 1, "dept": 1})
    status, text, headers = server.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    for stage in ("feature_read", "model", "total"):
        assert samples[f'salesfc_predict_duration_seconds_count{{stage="{stage}"}}'] >= 1
    assert samples['salesfc_predict_requests_total{status="200"}'] >= 1
    assert samples['salesfc_predict_rows_total{outcome="ok"}'] >= 1
    assert samples["salesfc_predict_coalesced_requests_count"] >= 1
    assert any(name.startswith(f'salesfc_model_info{{run_id="{RUN}"') for name in samples)
    assert samples["salesfc_feature_store_up"] == 1
    assert samples["salesfc_feature_age_seconds"] > 0
    status, spec, _ = server.get("/openapi.json")
    assert status == 200
    schemas = spec["components"]["schemas"]
    assert {"PredictRequest", "PredictResponse", "Forecast", "Row"} <= set(schemas)
    assert "at most 50 rows" in schemas["PredictRequest"]["properties"]["rows"]["description"]


def test_check_asks_the_service_for_a_forecast_of_its_run(server, workspace, run_salesfc):
    """What `helm test` runs with serving.enabled: the serving line passes against the run the service loaded, and
    fails, naming both runs, for a run the service does not answer with."""
    url = f"http://127.0.0.1:{server.port}"
    # No inference ran in this workspace, so the metrics check fails: only the serving line matters here.
    result = run_salesfc("check", "--workdir", str(workspace), "--serve-url", url, check=False)
    (line,) = [line for line in result.stdout.splitlines() if " serving: " in line]
    key = manifest(workspace)["forecast_series"][0]
    assert line.startswith("ok   serving: ") and f"{{store: {key // 1000}, dept: {key % 1000}}}" in line, line
    assert f"from model {RUN}" in line and "$" in line, line
    shutil.copytree(workspace / "models" / RUN, workspace / "models" / "serve-pinned")
    try:
        pinned = run_salesfc("check", "--workdir", str(workspace), "--serve-url", url, "--run-id", "serve-pinned",
                             "--wait-timeout", "1", check=False)
    finally:
        shutil.rmtree(workspace / "models" / "serve-pinned")
    assert pinned.returncode == 1
    (line,) = [line for line in pinned.stdout.splitlines() if " serving: " in line]
    assert line.startswith("FAIL serving: ") and f"answers with model {RUN}, not serve-pinned" in line, line


def test_stale_features_are_refused(server, workspace):
    """The manifest names a week the online store has not been materialized for: no forecast, a reason."""
    path = workspace / "data" / "prep.json"
    original = path.read_text()
    ahead = dict(json.loads(original))
    ahead["next_week"] = str((np.datetime64(ahead["next_week"]) + np.timedelta64(7, "D")))
    try:
        write_atomically(path, json.dumps(ahead))
        server.wait_until("the newer manifest loaded", lambda: server.get("/readyz")[1]["model"] == RUN and
                          server.post({"store": 1, "dept": 1})[1]["week"] == ahead["next_week"])
        status, body, _ = server.post({"rows": [{"store": 1, "dept": 1}, {"store": 1, "dept": 2}]})
        assert status == 200, body
        for row in body["forecasts"]:
            assert row["predicted_sales"] is None and row["error"]["code"] == "stale_features"
            assert f"does not hold the week of {ahead['next_week']}" in row["error"]["message"]
            assert "salesfc prep" in row["error"]["message"]
            assert row["feature_timestamp"].startswith(json.loads(original)["next_week"])
    finally:
        write_atomically(path, original)
    server.wait_until("the original manifest back", lambda: server.post({"store": 1, "dept": 1})[1]["forecasts"][0]
                      ["predicted_sales"] is not None)


def test_a_newer_run_is_swapped_in_under_load_without_a_failed_request(server, workspace):
    models = workspace / "models"
    failures: list = []
    seen: dict[int, list[str]] = {}
    stop = threading.Event()

    def client(number: int) -> None:
        seen[number] = []
        while not stop.is_set():
            status, body, _ = server.post({"rows": [{"store": 1, "dept": 1}, {"store": 1, "dept": 2}]})
            if status != 200 or any(row["error"] for row in body["forecasts"]):
                failures.append((status, body))
            else:
                seen[number].append(body["run_id"])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        # A finished run appears the way train publishes one: its folder complete, then LATEST renamed into place.
        shutil.copytree(models / RUN, models / "serve-b")
        write_atomically(models / "LATEST", "serve-b\n")
        server.wait_until("run serve-b answering", lambda: all(s and s[-1] == "serve-b" for s in seen.values()))
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        write_atomically(models / "LATEST", f"{RUN}\n")
    assert not failures, failures[:3]
    for runs in seen.values():
        switch = runs.index("serve-b")
        assert switch > 0 and set(runs[:switch]) == {RUN} and set(runs[switch:]) == {"serve-b"}
    server.wait_until("back on the first run", lambda: server.get("/readyz")[1]["model"] == RUN)


def test_starts_without_a_model_and_becomes_ready_when_one_is_published(workspace, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(workspace, workdir, ignore=shutil.ignore_patterns("models", "reports"))
    server = Server(workdir)
    try:
        status, body, headers = server.wait_until("past starting", lambda: (
            answer := server.post({"store": 1, "dept": 1}))[1]["detail"].startswith("starting") is False and answer)
        assert status == 503 and headers["Retry-After"] == "1"
        assert "LATEST does not exist" in body["detail"] and "salesfc train" in body["detail"], body
        status, state, headers = server.get("/readyz")
        assert status == 503 and headers["Retry-After"] == "1" and "LATEST does not exist" in state["reason"]
        shutil.copytree(workspace / "models" / RUN, workdir / "models" / RUN)
        write_atomically(workdir / "models" / "LATEST", f"{RUN}\n")
        server.ready()
        status, body, _ = server.post({"store": 1, "dept": 1})
        assert status == 200 and body["run_id"] == RUN and body["forecasts"][0]["predicted_sales"] is not None
        assert server.process.poll() is None
    finally:
        server.stop()


@pytest.mark.postgres
def test_postgres_outage_gives_503_then_recovers_without_a_restart(pg, tmp_path, run_salesfc):
    server_pg, database = pg
    env = server_pg.env(database)
    common = ("--workdir", str(tmp_path / "work"), "--feature-store", "postgres")
    run_salesfc("prep", "--size", "tiny", *common, env=env)
    run_salesfc("train", *common, "--run-id", RUN, "--epochs", "2", "--members", "1", env=env)
    workdir = tmp_path / "work"
    expected = None
    service = Server(workdir, "--feature-store", "postgres", env=env)
    try:
        service.ready()
        status, body, _ = service.post({"rows": [{"store": 1, "dept": 1}, {"store": 1, "dept": 2}]})
        assert status == 200 and all(row["predicted_sales"] is not None for row in body["forecasts"]), body
        expected = [row["predicted_sales"] for row in body["forecasts"]]

        server_pg.stop()
        status, body, headers = service.post({"store": 1, "dept": 1})
        assert status == 503 and headers["Retry-After"] == "1", body
        assert "does not answer" in body["detail"] or "does not open" in body["detail"], body
        assert service.get("/readyz")[0] == 503
        assert service.get("/healthz")[0] == 200  # liveness must not restart the pod for a database outage

        server_pg.start()
        service.wait_until("answers again", lambda: service.post({"store": 1, "dept": 1})[0] == 200)
        status, body, _ = service.post({"rows": [{"store": 1, "dept": 1}, {"store": 1, "dept": 2}]})
        assert status == 200 and [row["predicted_sales"] for row in body["forecasts"]] == expected
        assert service.get("/readyz")[0] == 200
        assert service.process.poll() is None  # the same process throughout
        assert "does not answer" in service.output() or "does not open" in service.output()
    finally:
        service.stop()


def test_a_quantile_model_answers_its_band_at_every_horizon(workspace, run_salesfc):
    run_salesfc("train", "--workdir", str(workspace), "--run-id", "serve-q", "--epochs", "2", "--members", "1",
                 "--quantiles", "0.1,0.9", "--horizon", "3")
    write_atomically(workspace / "models" / "LATEST", f"{RUN}\n")  # the module's server stays on its run
    # infer widens next week's band by the errors of the latest held-out weeks (salesfc.band), not by the model's own
    # widening (made far wider here, so the two cannot agree by chance); serve answers infer's band
    from salesfc.train import set_band

    set_band(workspace / "models" / "serve-q" / "model.pt", [0.5, 0.5, 0.5])
    run_salesfc("infer", "--workdir", str(workspace), "--run-id", "serve-q", "--level-correction", "on")
    report = workspace / "reports" / "serve-q"
    batch = pd.read_parquet(report / "predictions.parquet")
    result = json.loads((report / "metrics.json").read_text())
    widen = result["next_week_band"]
    assert len(widen) == 3 and max(widen) < 0.5
    # and, asked to, multiplies every forecast by the level's factor of the latest held-out weeks (salesfc.correction):
    # serve too
    assert result["level_correction"]["next_week"] != 1.0
    server = Server(workspace, "--run-id", "serve-q")
    answers = {}
    try:
        server.ready()
        first = batch[batch["horizon"] == 1].head(10)
        pairs = list(zip(first["store"], first["dept"]))
        for horizon in (None, 1, 3, 4):
            body = {"rows": [{"store": int(s), "dept": int(d)} for s, d in pairs]}
            answers[horizon] = server.post(body if horizon is None else {**body, "horizon": horizon})
    finally:
        server.stop()
    assert answers[None][:2] == answers[1][:2]  # horizon 1 is the default: next week
    for horizon in (1, 3):
        status, body, _ = answers[horizon]
        assert status == 200 and body["run_id"] == "serve-q" and body["horizon"] == horizon, body
        expected_rows = batch[batch["horizon"] == horizon].head(10)
        for row, (_, expected) in zip(body["forecasts"], expected_rows.iterrows()):
            assert (row["store"], row["dept"], row["horizon"]) == (expected["store"], expected["dept"], horizon)
            assert row["week"] == f"{expected['week']:%Y-%m-%d}"
            band = row["quantiles"]
            assert set(band) == {"p10", "p50", "p90"} and band["p10"] <= band["p50"] <= band["p90"]
            assert band["p50"] == row["predicted_sales"]
            # float32 arithmetic over other batch sizes: a few cents apart on the largest series
            assert band["p50"] == pytest.approx(expected["predicted_sales"], rel=1e-6, abs=0.011)
            assert band["p10"] == pytest.approx(expected["predicted_sales_p10"], rel=1e-6, abs=0.011)
            assert band["p90"] == pytest.approx(expected["predicted_sales_p90"], rel=1e-6, abs=0.011)
    status, body, _ = answers[4]
    assert status == 422 and body["detail"][0]["loc"] == ["body", "horizon"], body
    assert "--horizon is 3" in body["detail"][0]["msg"]