"""salesfc submit's arguments, the TrainJob it builds from the Kubeflow SDK's types, and rank 0's progress reporter.

The SDK's local backend takes only a CustomTrainer (a Python function), not the CustomTrainerContainer submit uses,
so these tests build the TrainJob with the SDK's Kubernetes types and stop short of a cluster; tests/cluster sends
it to real Trainer webhooks and controllers.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from local_http import JsonHandler, serve, stop

from salesfc import settings, submit, trainer_status
from salesfc.cli import build_parser
from salesfc.errors import UserError


def config(argv, environ=None) -> settings.Config:
    args = build_parser().parse_args(["submit", *argv])
    return settings.Config("submit", settings.resolve(args, "submit", environ or {}))


def runtime(kind: str):
    from kubeflow.trainer import Runtime, RuntimeKind, RuntimeTrainer, TrainerType

    trainer = RuntimeTrainer(trainer_type=TrainerType.CUSTOM_TRAINER, framework="torch",
                             image="quay.io/salesfc/salesfc:0.1.0")
    trainer.num_nodes = 1
    return Runtime(name="salesfc-trainer-0a1b2c3d", kind=RuntimeKind(kind), trainer=trainer)


def built(argv, kind="TrainingRuntime", environ=None) -> dict:
    labels = {"app.kubernetes.io/part-of": "salesfc", "app.kubernetes.io/instance": "forecasting"}
    return submit.trainjob(runtime(kind), labels, "train-1", config(argv, environ)).to_dict()


def test_wait_and_follow_are_switches_with_variables():
    assert config([]).wait is False and config([]).follow is False
    assert config(["--wait"]).wait is True
    assert config(["--wait", "false", "--follow"]).values()["wait"] is False
    assert config([], {"SALESFC_FOLLOW": "yes"}).follow is True
    with pytest.raises(settings.SettingError, match=r"SALESFC_WAIT \(environment\): 'soon' must be true or false"):
        config([], {"SALESFC_WAIT": "soon"})


@pytest.mark.parametrize("argv, fragment", [
    (["--cpu", "4 cores"], "--cpu: '4 cores' must be a Kubernetes quantity, e.g. 4, 500m, 16Gi"),
    (["--memory", "16GB"], "--memory: '16GB' must be a Kubernetes quantity"),
    (["--gpus", "-1"], "--gpus: '-1' must be a whole number of at least 0"),
    (["--num-nodes", "0"], "--num-nodes: '0' must be a whole number of at least 1"),
    (["--run-id", "Train_1"], "--run-id: 'Train_1' must be lower-case letters"),
])
def test_bad_arguments_name_the_flag_and_the_fix(argv, fragment):
    with pytest.raises(settings.SettingError) as caught:
        config(argv)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("kind", ["TrainingRuntime", "ClusterTrainingRuntime"])
def test_the_runtime_ref_names_the_runtime_kind(kind):
    assert built([], kind)["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": kind,
                                                      "name": "salesfc-trainer-0a1b2c3d"}


def test_nodes_processes_resources_and_settings_reach_the_trainer():
    job = built(["--num-nodes", "2", "--nproc-per-node", "4", "--cpu", "7500m", "--memory", "30Gi", "--gpus", "4",
                 "--epochs", "12", "--hidden", "32,16"], environ={"SALESFC_LR": "0.01"})
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    wanted = {"cpu": "7500m", "memory": "30Gi", "nvidia.com/gpu": "4"}
    assert {k: str(v) for k, v in trainer["resourcesPerNode"]["limits"].items()} == wanted
    assert {k: str(v) for k, v in trainer["resourcesPerNode"]["requests"].items()} == wanted
    assert trainer["command"] == ["torchrun"] and trainer["args"] == ["-m", "salesfc", "train"]
    env = {e["name"]: e["value"] for e in trainer["env"]}
    assert env["SALESFC_EPOCHS"] == "12" and env["SALESFC_HIDDEN"] == "32,16" and env["SALESFC_LR"] == "0.01"
    assert env["SALESFC_RUN_ID"] == "train-1" == job["metadata"]["name"]
    # The submitter's own settings stay with it; the runtime brings the store's.
    assert not {"SALESFC_NAMESPACE", "SALESFC_RUNTIME", "SALESFC_WAIT", "SALESFC_LOG_LEVEL",
                "SALESFC_NPROC_PER_NODE", "SALESFC_WORKDIR"} & set(env)
    assert job["metadata"]["labels"]["app.kubernetes.io/instance"] == "forecasting"


def test_unset_counts_and_resources_are_left_to_the_runtime_and_the_trainer():
    trainer = built([])["spec"]["trainer"]
    assert trainer["image"] == "quay.io/salesfc/salesfc:0.1.0"
    assert not {"numNodes", "numProcPerNode", "resourcesPerNode"} & set(trainer)
    assert built(["--image", "registry.example/salesfc:dev"])["spec"]["trainer"]["image"] == \
        "registry.example/salesfc:dev"


def test_a_name_too_long_for_the_jobset_is_refused_before_the_cluster_is_asked():
    with pytest.raises(UserError, match="at most 47 characters"):
        submit.run(config(["--runtime", "r", "--run-id", "t" * 48]))


def test_no_cluster_configuration_is_one_line_saying_what_to_set(tmp_path):
    result = subprocess.run([sys.executable, "-m", "salesfc", "submit", "--runtime", "salesfc-trainer"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KUBECONFIG": str(tmp_path / "none"), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("salesfc submit: error: no cluster to submit to: ")
    assert "point KUBECONFIG at the cluster's kubeconfig" in result.stderr


RECORD = {"epoch": 2, "train_loss": 0.01, "val_loss": 0.02, "val_wmae": 1650.0}


def reports(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


def test_without_a_status_server_rank_0_says_so_once_in_a_trainjob_and_nothing_elsewhere(monkeypatch, caplog):
    monkeypatch.delenv(trainer_status.SERVER_URL_ENV, raising=False)
    caplog.set_level(logging.INFO, logger="salesfc")
    monkeypatch.delenv("PET_NNODES", raising=False)
    local = trainer_status.Reporter(True, epochs=4)
    assert not local.epoch_done(RECORD, 2) and not local.finished(RECORD, 2)
    assert reports(caplog, "not reported") == 0

    monkeypatch.setenv("PET_NNODES", "2")
    reporter = trainer_status.Reporter(True, epochs=4)
    for _ in range(3):
        assert not reporter.epoch_done(RECORD, 2)
    assert not reporter.finished(RECORD, 2)
    assert reports(caplog, "progress is not reported on the TrainJob's status") == 1


def test_a_status_server_that_does_not_answer_is_one_warning_and_training_goes_on(monkeypatch, caplog, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens on it once the socket is closed
    (tmp_path / "token").write_text("a-token")
    monkeypatch.setenv(trainer_status.SERVER_URL_ENV, f"https://127.0.0.1:{closed}/apis/trainer.kubeflow.org/"
                                                      f"v1alpha1/namespaces/ns/trainjobs/t/status")
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_TOKEN", str(tmp_path / "token"))
    caplog.set_level(logging.INFO)
    assert trainer_status.Reporter(False, epochs=4).update is None  # only rank 0 reports
    reporter = trainer_status.Reporter(True, epochs=4)
    assert not reporter.epoch_done(RECORD, 2)
    assert not reporter.epoch_done(RECORD, 2)  # not sent, so not throttled: tried again
    assert reports(caplog, "did not take the progress update") == 1
    assert reports(caplog, "Failed to send status update") == 2  # the SDK's own, once per try


# -- Progress updates as they reach a status server ----------------------------------------------------------------
# A local HTTP server stands in for the Trainer's status server and records what the real SDK
# (kubeflow.trainer.update_trainjob_status) posts. A clock of the test's own replaces `time` in trainer_status and in
# the SDK's module alike, so both throttles (the Reporter's and the SDK's) run their real code on the same time.

class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StatusServer:
    """Records every POST: (when on the test's clock, path, Authorization header, JSON body); answers 200."""

    def __init__(self, clock=None):
        self.posts = []
        recorder = self

        class Handler(JsonHandler):
            def do_POST(self):  # noqa: N802 - the http.server name
                body = self.read_json()
                when = clock.monotonic() if clock else time.monotonic()
                recorder.posts.append((when, self.path, self.headers.get("Authorization"), body))
                self.reply(200, {})

        self.server = serve(Handler)
        self.url = (f"http://127.0.0.1:{self.server.server_address[1]}/apis/trainer.kubeflow.org/v1alpha1/"
                    f"namespaces/ns/trainjobs/t/status")

    def sent(self) -> list[tuple[int, int]]:
        return [(b["trainerStatus"]["progressPercentage"], b["trainerStatus"]["estimatedRemainingSeconds"])
                for _, _, _, b in self.posts]

    def close(self):
        stop(self.server)


@pytest.fixture
def sdk_status():
    """The SDK's status module with its process-wide state (last update time, cached token) fresh for this test."""
    from kubeflow.trainer.backends.kubernetes import utils as sdk_utils

    saved = sdk_utils._last_update_time, sdk_utils._cached_token, sdk_utils._token_read_time
    sdk_utils._last_update_time, sdk_utils._cached_token, sdk_utils._token_read_time = -math.inf, None, 0.0
    yield sdk_utils
    sdk_utils._last_update_time, sdk_utils._cached_token, sdk_utils._token_read_time = saved


@pytest.fixture
def status_server(monkeypatch, tmp_path, sdk_status):
    def start(clock=None) -> StatusServer:
        server = StatusServer(clock)
        servers.append(server)
        (tmp_path / "token").write_text("the-pod-token\n")
        monkeypatch.setenv(trainer_status.SERVER_URL_ENV, server.url)
        monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_TOKEN", str(tmp_path / "token"))
        if clock is not None:
            monkeypatch.setattr(trainer_status, "time", clock)
            monkeypatch.setattr(sdk_status, "time", clock)
        return server

    servers: list[StatusServer] = []
    yield start
    for server in servers:
        server.close()


def epoch(n: int) -> dict:
    return {"epoch": n, "train_loss": 0.5 / n, "val_loss": 0.6 / n, "val_wmae": 3000.0 / n}


def test_our_interval_is_above_the_sdks_throttle_which_would_drop_updates(sdk_status):
    # The SDK drops (returns False, sends nothing) an update within this many seconds of the one before: a Reporter
    # that sent more often would lose updates and warn for nothing; the final sleep must cover exactly it.
    assert trainer_status.SDK_MIN_INTERVAL_SECONDS == sdk_status._MIN_UPDATE_INTERVAL_SECONDS
    assert trainer_status.INTERVAL_SECONDS >= sdk_status._MIN_UPDATE_INTERVAL_SECONDS


def test_progress_and_time_left_go_out_after_epochs_at_most_every_interval_and_once_at_the_end(status_server,
                                                                                                 caplog):
    clock = Clock()
    server = status_server(clock)
    caplog.set_level(logging.INFO)
    reporter = trainer_status.Reporter(True, epochs=10)
    sent = []
    for n in range(1, 11):
        clock.advance(12)  # each epoch takes 12 s
        sent.append(reporter.epoch_done(epoch(n), best_epoch=n))
    assert reporter.finished(epoch(10), best_epoch=9)

    # 30 s apart at least: epochs 1, 4, 7 and 10 (12 s each); the percentage of epochs done and the time left at
    # the mean epoch time so far.
    assert sent == [n in (1, 4, 7, 10) for n in range(1, 11)]
    assert server.sent() == [(10, 108), (40, 72), (70, 36), (100, 0), (100, 0)]
    times = [when for when, *_ in server.posts]
    assert times[:4] == [1012.0, 1048.0, 1084.0, 1120.0]
    # The last word waits out the SDK's throttle instead of being dropped by it.
    assert times[4] - times[3] == trainer_status.SDK_MIN_INTERVAL_SECONDS
    first = server.posts[0]
    assert first[1].endswith("/namespaces/ns/trainjobs/t/status") and first[2] == "Bearer the-pod-token"
    status = first[3]["trainerStatus"]
    assert {m["name"]: m["value"] for m in status["metrics"]} == {
        "epoch": "1/10", "best_epoch": "1", "train_loss": "0.50000", "val_loss": "0.60000", "val_wmae": "3000.00"}
    assert set(status) == {"lastUpdatedTime", "progressPercentage", "estimatedRemainingSeconds", "metrics"}
    last = {m["name"]: m["value"] for m in server.posts[-1][3]["trainerStatus"]["metrics"]}
    assert last["epoch"] == "10/10" and last["best_epoch"] == "9"
    assert reports(caplog, "did not take the progress update") == 0


def test_a_resumed_run_estimates_time_left_from_its_own_epochs_only(status_server):
    clock = Clock()
    server = status_server(clock)
    reporter = trainer_status.Reporter(True, epochs=10, first_epoch=5)  # epochs 1-5 ran before a restart
    clock.advance(20)
    assert reporter.epoch_done(epoch(6), best_epoch=6)
    assert server.sent() == [(60, 80)]  # 20 s per epoch, 4 to go


def test_the_final_update_is_not_lost_to_the_sdks_throttle_in_real_time(status_server):
    server = status_server()  # the real clock: the SDK's throttle as a training run meets it
    reporter = trainer_status.Reporter(True, epochs=2)
    assert reporter.epoch_done(epoch(2), best_epoch=2)
    assert reporter.finished(epoch(2), best_epoch=2)
    assert server.sent() == [(100, 0), (100, 0)]
    assert server.posts[1][0] - server.posts[0][0] >= trainer_status.SDK_MIN_INTERVAL_SECONDS - 0.05


# -- --follow, the notebook snippet and get_job against a local API server -------------------------------------------
# The KWOK bed of tests/cluster serves no pod logs (it would need a kubelet TLS endpoint and log files, and KWOK's
# follow never ends: its containers never stop), so rank 0's log stream is tested here: the real TrainerClient and
# kubernetes client, through a kubeconfig, against a small local API server that answers the requests they make and
# streams a pod log in chunks as the API server does.

NAMESPACE, RUNTIME, IMAGE = "forecasting", "salesfc-trainer-a61c5f70", "quay.io/salesfc/salesfc:0.1.0"
TRAINER_API = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NAMESPACE}"
LOG = ["[rank 0] epoch 1/3 train_loss 0.01 val_wmae 1900.00", "[rank 0] epoch 2/3 train_loss 0.008 val_wmae 1700.00",
       "[rank 0] epoch 3/3 train_loss 0.007 val_wmae 1650.00", "[rank 0] model saved"]
PROGRESS = {"progressPercentage": 100, "estimatedRemainingSeconds": 0, "lastUpdatedTime": "2026-01-01T00:00:00Z",
            "metrics": [{"name": "epoch", "value": "3/3"}, {"name": "val_wmae", "value": "1650.00"}]}


def chart_runtime() -> dict:
    """A namespaced runtime as the chart renders it (training.runtime.kind: TrainingRuntime), cut to what the SDK
    reads."""
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainingRuntime",
            "metadata": {"name": RUNTIME, "namespace": NAMESPACE,
                         "labels": {"app.kubernetes.io/part-of": "salesfc", "app.kubernetes.io/component": "trainer",
                                    "app.kubernetes.io/instance": "salesfc",
                                    "trainer.kubeflow.org/framework": "torch"}},
            "spec": {"mlPolicy": {"numNodes": 1, "torch": {}}, "template": {"spec": {"replicatedJobs": [
                {"name": "node", "template": {
                    "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                    "spec": {"template": {"spec": {"containers": [{"name": "node", "image": IMAGE}]}}}}}]}}}}


class FakeApiServer:
    """The API server requests of TrainerClient and submit: runtimes, TrainJobs, the TrainJob's pods, a pod's log.

    The TrainJob's pods (one a node) are Pending for the first ``pending`` pod listings, then Running; node 0's log
    is LOG, sent one chunk a line; the TrainJob is Complete (with PROGRESS as its trainerStatus) once the log has
    ended."""

    def __init__(self, pending: int = 2):
        import threading
        from urllib.parse import parse_qs, urlsplit

        self.requests: list[tuple[str, str, dict]] = []
        self.trainjobs: dict[str, dict] = {}
        self.pod_listings = 0
        self.log_ended = False
        self.printed_first_line = threading.Event()
        self.streamed = None  # whether the first line was printed before the rest was sent
        fake = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"

            def not_found(self) -> None:
                self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                 "message": f"{self.path} not found", "code": 404})

            def do_GET(self):  # noqa: N802
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.requests.append(("GET", url.path, query))
                path = url.path
                if path == f"{TRAINER_API}/trainingruntimes/{RUNTIME}":
                    return self.reply(200, chart_runtime())
                if path.startswith(f"{TRAINER_API}/trainjobs/") and path.rsplit("/", 1)[1] in fake.trainjobs:
                    return self.reply(200, fake.trainjob(path.rsplit("/", 1)[1]))
                if path == f"/api/v1/namespaces/{NAMESPACE}/pods":
                    name = query["labelSelector"].split(",")[0].split("=")[1]
                    fake.pod_listings += 1
                    phase = "Pending" if fake.pod_listings <= pending else \
                        "Succeeded" if fake.log_ended else "Running"
                    nodes = (fake.trainjobs[name]["spec"].get("trainer") or {}).get("numNodes", 1) \
                        if name in fake.trainjobs else 0
                    return self.reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                                            "items": [fake.pod(name, index, phase) for index in range(nodes)]})
                if path.startswith(f"/api/v1/namespaces/{NAMESPACE}/pods/") and path.endswith("-node-0-0-abcde/log"):
                    return self.stream_log()
                return self.not_found()

            def do_POST(self):  # noqa: N802
                body = self.read_json()
                fake.requests.append(("POST", self.path, body))
                if self.path != f"{TRAINER_API}/trainjobs":
                    return self.not_found()
                body["metadata"].update(namespace=NAMESPACE, creationTimestamp="2026-01-01T00:00:00Z")
                fake.trainjobs[body["metadata"]["name"]] = body
                return self.reply(201, body)

            def stream_log(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def chunk(data: bytes) -> None:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()

                chunk(f"{LOG[0]}\n".encode())
                fake.streamed = fake.printed_first_line.wait(10)
                for line in LOG[1:]:
                    chunk(f"{line}\n".encode())
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                fake.log_ended = True

        self.server = serve(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def trainjob(self, name: str) -> dict:
        obj = dict(self.trainjobs[name])
        if self.log_ended:
            obj["status"] = {"conditions": [{"type": "Complete", "status": "True", "reason": "JobSetCompleted",
                                             "message": "", "lastTransitionTime": "2026-01-01T00:01:00Z"}],
                             "trainerStatus": PROGRESS}
        return obj

    def pod(self, trainjob: str, index: int, phase: str) -> dict:
        return {"metadata": {"name": f"{trainjob}-node-0-{index}-abcde", "namespace": NAMESPACE,
                             "creationTimestamp": "2026-01-01T00:00:01Z",
                             "labels": {"jobset.sigs.k8s.io/jobset-name": trainjob,
                                        "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                        "batch.kubernetes.io/job-completion-index": str(index)}},
                "spec": {"containers": [{"name": "node", "image": IMAGE}]},
                "status": {"phase": phase}}

    def log_requests(self) -> list[tuple[int, dict]]:
        """(pod listings before it, query) of each pod log request."""
        return [(i, query) for i, (method, path, query) in enumerate(self.requests) if path.endswith("/log")]

    def close(self):
        stop(self.server)


class Terminal:
    """sys.stdout as a notebook or shell shows it: what was printed, and when LOG's first line came."""

    def __init__(self, fake: FakeApiServer):
        self.fake, self.text = fake, ""

    def write(self, text: str) -> int:
        self.text += text
        if LOG[0] in self.text:
            self.fake.printed_first_line.set()
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture
def api(monkeypatch, tmp_path):
    """A FakeApiServer, the kubeconfig that points at it (KUBECONFIG) and a Terminal for sys.stdout (set by the test
    itself: pytest's capture sets sys.stdout again after the fixtures)."""
    fake = FakeApiServer()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "someone", "user": {"token": "a-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "someone", "namespace": NAMESPACE}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # The kubernetes client reads KUBECONFIG once, at import: a test before this one may have imported it.
    from kubernetes.config import kube_config
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.setattr(submit, "POLL_SECONDS", 0.05)
    fake.terminal = Terminal(fake)
    yield fake
    fake.close()


def test_follow_streams_rank_0s_log_once_its_pod_has_started_then_waits_for_the_end(api, monkeypatch):
    monkeypatch.setattr(sys, "stdout", api.terminal)
    code = submit.run(config(["--runtime", RUNTIME, "--namespace", NAMESPACE, "--run-id", "train-f", "--follow",
                              "--job-timeout", "60", "--epochs", "3"]))
    assert code == 0
    [(before, query)] = api.log_requests()
    # Asked only once node 0's pod was no longer Pending (a kubelet refuses the log of a container not started).
    assert api.pod_listings > 2 and [p for _, p, _ in api.requests[:before]].count(
        f"/api/v1/namespaces/{NAMESPACE}/pods") > 2
    assert api.requests[before][1] == f"/api/v1/namespaces/{NAMESPACE}/pods/train-f-node-0-0-abcde/log"
    assert query["container"] == "node" and query["follow"].lower() == "true"
    assert api.streamed, "the first log line was not printed before the rest of the log arrived: not streamed"
    lines = api.terminal.text.splitlines()
    assert lines[0].startswith(f"submit: TrainJob {NAMESPACE}/train-f created on TrainingRuntime {RUNTIME}")
    assert lines[2:6] == LOG  # whole lines, in order, nothing added
    assert lines[6:] == [f"submit: train-f: 100% done, about 0 min left, epoch 3/3, val_wmae 1650.00",
                         f"submit: TrainJob {NAMESPACE}/train-f completed; its model: /shared/models/train-f/ on the "
                         f"release's shared volume"]


def notebook_blocks() -> list[str]:
    """The Python blocks of the chart README's notebook section, in order."""
    readme = (Path(__file__).resolve().parents[2] / "charts" / "salesfc" / "README.md").read_text()
    section = readme.split("## Training from a notebook or a shell (Kubeflow SDK)")[1].split("\n## ")[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readmes_notebook_snippet_runs_the_sdk_and_sends_our_trainjob(api, monkeypatch):
    monkeypatch.setattr(sys, "stdout", api.terminal)
    blocks = notebook_blocks()
    assert len(blocks) == 3
    code = "\n".join(blocks).replace("<runtime>", RUNTIME)
    assert "salesfc" not in re.findall(r"^(?:from|import) (\S+)", code, re.M)  # the SDK itself, not our helpers
    scope: dict = {}
    exec(compile(code, "charts/salesfc/README.md", "exec"), scope)  # noqa: S102 - the README's own code

    [(method, path, sent)] = [r for r in api.requests if r[0] == "POST"]
    assert path == f"{TRAINER_API}/trainjobs" and scope["job"] == "train-notebook-1"
    # What `salesfc submit` sends for the same settings, but numProcPerNode (the runtime's; train() cannot set it).
    ours = submit.trainjob(*submit.find_runtime(submit.connect(NAMESPACE), RUNTIME), "train-notebook-1", config(
        ["--num-nodes", "2", "--cpu", "8", "--memory", "30Gi", "--gpus", "4", "--epochs", "60", "--lr", "0.001"]))
    ours = ours.to_dict()
    # The SDK names the runtime's kind, as submit does (without it the Trainer would look for a ClusterTrainingRuntime).
    assert sent["spec"]["runtimeRef"] == {"kind": "TrainingRuntime", "name": RUNTIME}
    assert {k: ours["spec"]["runtimeRef"][k] for k in ("kind", "name")} == sent["spec"]["runtimeRef"]
    for key in ("image", "numNodes", "command", "args", "resourcesPerNode"):
        assert sent["spec"]["trainer"][key] == ours["spec"]["trainer"][key], key
    sent_env = {e["name"]: e["value"] for e in sent["spec"]["trainer"]["env"]}
    our_env = {e["name"]: e["value"] for e in ours["spec"]["trainer"]["env"]}
    assert sent_env.items() <= our_env.items()
    labels = sent["metadata"]["labels"]
    assert labels == {k: v for k, v in ours["metadata"]["labels"].items() if k != "app.kubernetes.io/instance"}
    # The log, streamed; the end; the progress read from the TrainJob.
    printed = api.terminal.text.splitlines()
    assert printed[:4] == LOG and printed[4] == "Complete"
    assert printed[5] == "100% done, 0 s left, {'epoch': '3/3', 'val_wmae': '1650.00'}"


def test_get_job_has_no_progress_in_this_sdk_as_the_readme_says(api):
    import dataclasses

    from kubeflow.trainer import TrainerClient, KubernetesBackendConfig
    from kubeflow.trainer.types.types import TrainJob

    # Were the SDK to add progress to its TrainJob, the README (and submit's own reading) would be out of date.
    assert {f.name for f in dataclasses.fields(TrainJob)} == {
        "name", "runtime", "steps", "num_nodes", "creation_timestamp", "status"}
    client = TrainerClient(KubernetesBackendConfig(namespace=NAMESPACE))
    api.trainjobs["done"] = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                             "metadata": {"name": "done", "namespace": NAMESPACE,
                                          "creationTimestamp": "2026-01-01T00:00:00Z"},
                             "spec": {"runtimeRef": {"name": RUNTIME, "kind": "TrainingRuntime"}}}
    api.log_ended = True  # Complete, with PROGRESS on its status
    job = client.get_job("done")
    assert job.status == "Complete"
    assert "100" not in repr(job) and "1650" not in repr(job)
    assert submit.trainer_status(client, "done") == PROGRESS
