"""`salesfc submit` against the real Trainer webhooks and controllers, and training progress on the TrainJob's status.

The release runs on a namespaced TrainingRuntime: the kind the Kubeflow SDK has to name in runtimeRef.kind (the
Trainer's default kind is ClusterTrainingRuntime, so a TrainJob that left it out would point at nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from clusterlib import (ON_ALL_WITH_TRAINJOB_STATUS, check_node_job, env_of, helm, install, jobset, manifest,
                        node_job, precreate_runtime, trainjobs, unique)

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
    if bed.trainer == "v2.1.0":
        precreate_runtime(bed, "salesfc", namespace, CPU, NAMESPACED)
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

    # Rank 0 of that pod: a real training run on tiny data, with the pod's Trainer environment.
    trained = salesfc(bed, "train", "--workdir", str(prepared), "--run-id", name, "--epochs", "3", "--members", "1",
                      env=env, prefix=in_cluster_dns(tmp_path))
    assert trained.returncode == 0, trained.stderr
    history = json.loads((prepared / "models" / name / "training.json").read_text())["history"]
    status = bed.get("trainjobs.trainer.kubeflow.org", "-n", namespace, name).get("status", {})
    if bed.trainer == "v2.1.0":
        assert STATUS_URL not in env
        assert trained.stderr.count("progress is not reported on the TrainJob's status") == 1
        assert "trainerStatus" not in status
        return
    assert "reporting progress on the TrainJob's status" in trained.stderr
    assert "did not take the progress update" not in trained.stderr, trained.stderr
    reported = status["trainerStatus"]
    assert reported["progressPercentage"] == 100 and reported["estimatedRemainingSeconds"] == 0
    metrics = {m["name"]: m["value"] for m in reported["metrics"]}
    assert metrics["epoch"] == "3/3"
    assert metrics["val_wmae"] == f"{history[-1]['val_wmae']:.2f}"
    assert metrics["val_loss"] == f"{history[-1]['val_loss']:.5f}"
    # What `kubectl get trainjob` users are told to run (NOTES.txt) shows the same.
    shown = bed.kubectl("get", "trainjob", "-n", namespace, name, "-o", "jsonpath={.status.trainerStatus}").stdout
    assert yaml.safe_load(shown)["progressPercentage"] == 100
