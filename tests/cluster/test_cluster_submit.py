"""`salesfc submit` against the real Trainer webhooks and controllers, and training progress on the TrainJob's status.

The release runs on a namespaced TrainingRuntime: the kind the Kubeflow SDK has to name in runtimeRef.kind (the
Trainer's default kind is ClusterTrainingRuntime, so a TrainJob that left it out would point at nothing).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import control_plane
from clusterlib import (ON_ALL_WITH_TRAINJOB_STATUS, check_node_job, env_of, helm, install, jobset, manifest,
                        node_job, trainjobs, unique, wait_trainjob_complete)

pytestmark = pytest.mark.cluster

CPU = ["values/cpu.yaml"]
NAMESPACED = {"training.runtime.kind": "TrainingRuntime"}
STATUS_URL = "KUBEFLOW_TRAINER_SERVER_URL"


def salesfc(bed, *args: str, env: dict | None = None, prefix: tuple[str, ...] = (),
            timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "salesfc", *args], capture_output=True, text=True,
                          env={**bed.env(), "OMP_NUM_THREADS": "1", **(env or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def release(bed):
    """A release of the CPU profile on a namespaced TrainingRuntime: (namespace, runtime name)."""
    namespace = unique("submit")
    install(bed, "salesfc", namespace, CPU, NAMESPACED)
    runtime = next(o for o in manifest(bed, "salesfc", namespace) if o["kind"] == "TrainingRuntime")
    yield namespace, runtime["metadata"]["name"]
    # The submitted TrainJobs are not the release's, and Trainer v2.1 keeps a runtime in use from being deleted
    # (the chart README says so): they go first.
    bed.kubectl("delete", "trainjobs.trainer.kubeflow.org", "-n", namespace, "--wait",
                "-l", "app.kubernetes.io/managed-by=salesfc-submit")
    helm(bed, "uninstall", "salesfc", "-n", namespace, "--wait")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A working directory with tiny prepared data, for a real `salesfc train` to read."""
    workdir = tmp_path_factory.mktemp("prepared")
    result = subprocess.run([sys.executable, "-m", "salesfc", "prep", "--size", "tiny", "--workdir", str(workdir)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    return workdir


@ON_ALL_WITH_TRAINJOB_STATUS
def test_submit_creates_a_trainjob_the_webhook_admits_and_the_jobset_asked_for(bed, release):
    namespace, runtime = release
    name = unique("sub")
    result = salesfc(bed, "submit", "--runtime", runtime, "--namespace", namespace, "--run-id", name,
                     "--num-nodes", "2", "--nproc-per-node", "3", "--cpu", "3", "--memory", "5Gi", "--epochs", "7",
                     "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"TrainJob {namespace}/{name} completed" in result.stdout

    tj = bed.get("trainjobs.trainer.kubeflow.org", "-n", namespace, name)
    assert tj["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                        "name": runtime}
    assert tj["metadata"]["labels"]["app.kubernetes.io/instance"] == "salesfc"
    values = {"training": {"numNodes": 2, "numProcPerNode": 3, "resources": {"limits": {"cpu": "3", "memory": "5Gi"}},
                           "gpusPerNode": 0, "tolerations": []},
              "sharedStorage": {"existingClaim": ""}}
    js = check_node_job(bed, namespace, tj, values)
    container = next(c for c in node_job(js)["template"]["spec"]["template"]["spec"]["containers"]
                     if c["name"] == "node")
    assert container["command"] == ["torchrun"] and container["args"] == ["-m", "salesfc", "train"]
    env = env_of(container)
    assert env["SALESFC_EPOCHS"] == "7" and env["SALESFC_RUN_ID"] == name
    # The runtime's own environment (the feature store) is kept beside the TrainJob's.
    assert env["SALESFC_FEATURE_STORE"]
    assert (STATUS_URL in env) == (bed.trainer == "v2.3.0")


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("salesfc submit: error:")]


@ON_ALL_WITH_TRAINJOB_STATUS
def test_a_missing_or_foreign_runtime_is_refused_with_what_to_do(bed, release):
    namespace, runtime = release
    before = len(trainjobs(bed, namespace))
    missing = salesfc(bed, "submit", "--runtime", "no-such-runtime", "--namespace", namespace)
    assert missing.returncode == 1
    assert errors(missing) == [
        f"salesfc submit: error: --runtime no-such-runtime: there is no TrainingRuntime no-such-runtime in namespace "
        f"{namespace} and no ClusterTrainingRuntime no-such-runtime; salesfc runtimes here: TrainingRuntime "
        f"{runtime}" + "".join(f", ClusterTrainingRuntime {r['metadata']['name']}" for r in bed.get(
            "clustertrainingruntimes.trainer.kubeflow.org", "-l",
            "app.kubernetes.io/part-of=salesfc,app.kubernetes.io/component=trainer")["items"])]

    # A runtime the SDK can use, but not a salesfc one: its pods would lack the volume and the store's settings.
    ours = next(o for o in manifest(bed, "salesfc", namespace) if o["kind"] == "TrainingRuntime")
    foreign = unique("foreign")
    bed.apply([{"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainingRuntime",
                "metadata": {"name": foreign, "namespace": namespace,
                             "labels": {"trainer.kubeflow.org/framework": "torch"}},
                "spec": ours["spec"]}])
    refused = salesfc(bed, "submit", "--runtime", foreign, "--namespace", namespace)
    assert refused.returncode == 1
    [error] = errors(refused)
    assert error.startswith(f"salesfc submit: error: --runtime {foreign}: the TrainingRuntime {foreign} is not a "
                            f"salesfc training runtime")
    assert len(trainjobs(bed, namespace)) == before
    bed.kubectl("delete", "trainingruntimes.trainer.kubeflow.org", "-n", namespace, foreign)


def as_the_kubelet(bed, namespace: str, pod: dict, folder) -> dict:
    """The Trainer's status environment of a trainer pod, with what its kubelet would mount: the projected token
    (for the pod's ServiceAccount, with the audience the Trainer asked for) and the status server's CA."""
    container = next(c for c in pod["containers"] if c["name"] == "node")
    env = {k: v for k, v in env_of(container).items() if k.startswith("KUBEFLOW_TRAINER_") or k == "PET_NNODES"}
    if STATUS_URL not in env:
        return env
    sources = next(v["projected"]["sources"] for v in pod["volumes"] if "projected" in v)
    token = next(s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s)
    config_map = next(s["configMap"] for s in sources if "configMap" in s)
    (folder / "token").write_text(bed.kubectl("create", "token", pod["serviceAccountName"], "-n", namespace,
                                              "--audience", token["audience"]).stdout.strip())
    ca = bed.get("configmap", "-n", namespace, config_map["name"])["data"]["ca.crt"]
    (folder / "ca.crt").write_text(ca)
    return {**env, "KUBEFLOW_TRAINER_SERVER_CA_CERT": str(folder / "ca.crt"),
            "KUBEFLOW_TRAINER_SERVER_TOKEN": str(folder / "token")}


def in_cluster_dns(folder) -> tuple[str, ...]:
    """A command prefix that runs its command with the Trainer's Service name resolving to this machine (the bed's
    controllers listen on 127.0.0.1), the way cluster DNS resolves it for a pod: /etc/hosts of its own, in a mount
    namespace of its own. The TLS check of the Service name is the real one."""
    hosts = folder / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 kubeflow-trainer-controller-manager.kubeflow-system.svc\n")
    unshare = ("unshare", "-m", "--propagation", "private") if os.geteuid() == 0 else \
        ("unshare", "-r", "-m", "--propagation", "private")
    return (*unshare, "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts))


@ON_ALL_WITH_TRAINJOB_STATUS
def test_rank_0_reports_progress_on_the_trainjob_status_where_the_trainer_has_it(bed, release, prepared, tmp_path):
    namespace, runtime = release
    name = unique("progress")
    submitted = salesfc(bed, "submit", "--runtime", runtime, "--namespace", namespace, "--run-id", name)
    assert submitted.returncode == 0, submitted.stderr
    pod = node_job(jobset(bed, namespace, name))["template"]["spec"]["template"]["spec"]
    env = as_the_kubelet(bed, namespace, pod, tmp_path)

    # Rank 0 of that pod: a real training run on tiny data, with the pod's Trainer environment; every status the
    # TrainJob goes through on the way is watched.
    with Watch(bed, namespace, name) as watched:
        trained = salesfc(bed, "train", "--workdir", str(prepared), "--run-id", name, "--epochs", "3",
                          "--members", "1", env=env, prefix=in_cluster_dns(tmp_path))
    assert trained.returncode == 0, trained.stderr
    history = json.loads((prepared / "models" / name / "training.json").read_text())["history"]
    status = bed.get("trainjobs.trainer.kubeflow.org", "-n", namespace, name).get("status", {})
    if bed.trainer == "v2.1.0":
        assert STATUS_URL not in env
        assert trained.stderr.count("progress is not reported on the TrainJob's status") == 1
        assert "trainerStatus" not in status
        assert not watched.trainer_statuses()
        return
    assert "reporting progress on the TrainJob's status" in trained.stderr
    assert "did not take the progress update" not in trained.stderr, trained.stderr
    reported = status["trainerStatus"]
    assert reported["progressPercentage"] == 100 and reported["estimatedRemainingSeconds"] == 0
    metrics = {m["name"]: m["value"] for m in reported["metrics"]}
    assert metrics["epoch"] == "3/3"
    assert metrics["val_wmae"] == f"{history[-1]['val_wmae']:.2f}"
    assert metrics["val_loss"] == f"{history[-1]['val_loss']:.5f}"
    # On the way: the first epoch's update (the Reporter sends the first at once, then at most every 30 s), with
    # the percentage and a time left, then the final one; each as the Trainer's API has it.
    seen = watched.trainer_statuses()
    assert seen[-1] == reported
    first = seen[0]
    assert first["progressPercentage"] == 33 and {m["name"]: m["value"] for m in first["metrics"]}["epoch"] == "1/3"
    assert [s["progressPercentage"] for s in seen] == sorted(s["progressPercentage"] for s in seen)
    for s in seen:
        assert set(s) == {"progressPercentage", "estimatedRemainingSeconds", "metrics", "lastUpdatedTime"}, s
        assert isinstance(s["progressPercentage"], int) and isinstance(s["estimatedRemainingSeconds"], int)
        assert s["estimatedRemainingSeconds"] >= 0 and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", s["lastUpdatedTime"])
        assert [m["name"] for m in s["metrics"]] == ["epoch", "best_epoch", "train_loss", "val_loss", "val_wmae"]
    # What `kubectl get trainjob` users are told to run (NOTES.txt) shows the same.
    shown = bed.kubectl("get", "trainjob", "-n", namespace, name, "-o", "jsonpath={.status.trainerStatus}").stdout
    assert yaml.safe_load(shown)["progressPercentage"] == 100


class Watch:
    """`kubectl get trainjob --watch`: every state of one TrainJob while the block runs."""

    def __init__(self, bed, namespace: str, name: str):
        self.args = [control_plane.kubectl_path(), "get", "trainjobs.trainer.kubeflow.org", "-n", namespace, name,
                     "--watch", "-o", "json"]
        self.env, self.text = bed.env(), ""

    def __enter__(self):
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=self.env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 30
        while not self.text and time.monotonic() < deadline:  # the watch is on once the current state is in
            time.sleep(0.1)
        assert self.text, f"kubectl --watch printed nothing: {self.process.poll()}"
        return self

    def _read(self):
        for line in self.process.stdout:
            self.text += line

    def __exit__(self, *exc):
        time.sleep(2)  # the last update's event
        self.process.terminate()
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)

    def objects(self) -> list[dict]:
        decoder, found, at = json.JSONDecoder(), [], 0
        text = self.text
        while at < len(text):
            while at < len(text) and text[at].isspace():
                at += 1
            if at < len(text):
                obj, at = decoder.raw_decode(text, at)
                found.append(obj)
        return found

    def trainer_statuses(self) -> list[dict]:
        """Each trainerStatus the TrainJob had, in order, once."""
        seen: list[dict] = []
        for obj in self.objects():
            status = (obj.get("status") or {}).get("trainerStatus")
            if status and (not seen or status != seen[-1]):
                seen.append(status)
        return seen


def notebook_blocks() -> list[str]:
    readme = (Path(__file__).resolve().parents[2] / "charts" / "salesfc" / "README.md").read_text()
    section = readme.split("## Training from a notebook or a shell (Kubeflow SDK)")[1].split("\n## ")[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@ON_ALL_WITH_TRAINJOB_STATUS
def test_the_readmes_notebook_snippet_trains_on_the_release_runtime(bed, release, monkeypatch, capsys):
    """The chart README's notebook code, as a data scientist runs it, against the release: the SDK's TrainJob is
    admitted and turned into the JobSet asked for. (Its log block is left out: KWOK's pods have no logs; the unit
    tests stream one.)"""
    namespace, runtime = release
    submit_block, _logs_block, progress_block = notebook_blocks()
    name = unique("notebook")
    # A cluster of the bed's size: two CPU nodes (its one GPU node has 4 GPUs in all, and a CPU release no
    # toleration for it).
    code = submit_block.replace('"<runtime>"', repr(runtime)).replace('"forecasting"', repr(namespace)) \
        .replace(', "nvidia.com/gpu": "4"', "").replace('"train-notebook-1"', repr(name))
    assert "nvidia.com/gpu" not in code and name in code and runtime in code
    from kubernetes.config import kube_config

    monkeypatch.setenv("KUBECONFIG", str(bed.kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(bed.kubeconfig))
    scope: dict = {}
    exec(compile(code, "charts/salesfc/README.md", "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["job"] == name

    tj = bed.get("trainjobs.trainer.kubeflow.org", "-n", namespace, name)
    assert tj["spec"]["runtimeRef"]["kind"] == "TrainingRuntime" and tj["spec"]["runtimeRef"]["name"] == runtime
    assert tj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "salesfc-submit"  # the fixture deletes it
    job = node_job(jobset(bed, namespace, name))["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 2
    container = next(c for c in job["template"]["spec"]["containers"] if c["name"] == "node")
    assert container["command"] == ["torchrun"] and container["args"] == ["-m", "salesfc", "train"]
    assert container["image"] == scope["runtime"].trainer.image
    assert {k: str(v) for k, v in container["resources"]["limits"].items()} == {"cpu": "8", "memory": "30Gi"}
    env = env_of(container)
    assert env["SALESFC_EPOCHS"] == "60" and env["SALESFC_RUN_ID"] == name and env["SALESFC_FEATURE_STORE"]
    wait_trainjob_complete(bed, namespace, name)

    # The progress block reads the TrainJob's status through the SDK's models; no rank 0 ran here, so none.
    capsys.readouterr()
    exec(compile(progress_block.replace('"forecasting"', repr(namespace)), "charts/salesfc/README.md", "exec"),
         scope)  # noqa: S102
    assert scope["progress"] is None and capsys.readouterr().out == ""
