"""Helpers of the cluster tier: Helm against the bed, and reading what the controllers built."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import control_plane

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "salesfc"
TOOLS_BIN = control_plane.TOOLS / "bin"

# Each Trainer end is driven by a different Helm major: both clients meet a real server.
HELM_FOR_TRAINER = {"v2.1.0": "helm3", "v2.3.0": "helm4"}

ON_ALL = pytest.mark.parametrize("bed", control_plane.TRAINER_VERSIONS, indirect=True, scope="session")
ON_LATEST = pytest.mark.parametrize("bed", control_plane.TRAINER_VERSIONS[-1:], indirect=True, scope="session")
# v2.1, which has no TrainJob status, and v2.3 with its TrainJobStatus feature gate on (a control plane of its own:
# the gate changes every trainer pod, and the other tests check pods as the default Trainer builds them).
ON_ALL_WITH_TRAINJOB_STATUS = pytest.mark.parametrize(
    "bed", [pytest.param("v2.1.0", id="v2.1.0"),
            pytest.param(("v2.3.0", ("TrainJobStatus=true",)), id="v2.3.0-TrainJobStatus")],
    indirect=True, scope="session")

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 10000}-{next(_names)}"


def helm(bed: control_plane.Bed, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    home = bed.root / "helm-home"
    env = {**bed.env(), "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}
    binary = TOOLS_BIN / HELM_FOR_TRAINER[bed.trainer]
    result = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{binary.name} {' '.join(args)} exited {result.returncode}\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


def values_args(files: list[str], sets: dict | None = None) -> list[str]:
    args = []
    for f in files:
        args += ["-f", str(REPO / f)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


# Helm's --wait for an install or upgrade. KWOK makes a pod Ready within seconds on an idle machine, but CI builds the
# trainer image beside these tests, and once a first install on a new control plane waited past 4 minutes for the
# PostgreSQL StatefulSet (and passed in 35 s alone): a failure prints what the namespace held (describe_namespace).
WAIT_MINUTES = 7
WAIT = ("--wait", "--timeout", f"{WAIT_MINUTES}m")


def install(bed, release: str, namespace: str, files: list[str], sets: dict | None = None,
            extra: tuple[str, ...] = WAIT) -> subprocess.CompletedProcess:
    return waited(bed, namespace, "install", release, str(CHART), "-n", namespace, "--create-namespace",
                  *values_args(files, sets), *extra)


def upgrade(bed, release: str, namespace: str, files: list[str], sets: dict | None = None):
    return waited(bed, namespace, "upgrade", release, str(CHART), "-n", namespace, *values_args(files, sets), *WAIT)


def waited(bed, namespace: str, *args: str) -> subprocess.CompletedProcess:
    """helm with --wait; when it fails, the failure carries the namespace's pods, claims and events."""
    try:
        return helm(bed, *args, timeout=60 * (WAIT_MINUTES + 1))  # Helm's own deadline first
    except (AssertionError, subprocess.TimeoutExpired) as error:
        raise AssertionError(f"{error}\n{describe_namespace(bed, namespace)}") from error


def describe_namespace(bed, namespace: str) -> str:
    parts = []
    for args in (("get", "pods,statefulsets,jobs,pvc", "-n", namespace, "-o", "wide"),
                 ("get", "events", "-n", namespace, "--sort-by=.lastTimestamp"),
                 ("get", "nodes", "-o", "wide")):
        result = bed.kubectl(*args, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{result.stdout}{result.stderr}")
    return "\n".join(parts)


def manifest(bed, release: str, namespace: str) -> list[dict]:
    """The release's objects as the API server got them (a v1 List arrives as its items)."""
    out = helm(bed, "get", "manifest", release, "-n", namespace).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    return [item for d in docs for item in (d["items"] if d["kind"] == "List" else [d])]


def rendered_trainjob(rendered: list[dict]) -> dict:
    """The TrainJob the launch hook creates: the one in the release's TrainJob ConfigMap."""
    configmap = next(o for o in rendered if o["kind"] == "ConfigMap" and "trainjob.yaml" in o.get("data", {}))
    return yaml.safe_load(configmap["data"]["trainjob.yaml"])


def items(bed, kind: str, namespace: str | None = None, selector: str | None = None) -> list[dict]:
    args = [kind]
    args += ["-n", namespace] if namespace else []
    args += ["-l", selector] if selector else []
    return bed.get(*args)["items"]


def wait_for(what: str, attempt, timeout: float = 120, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = attempt()
            if value:
                return value
            last = value
        except (control_plane.BedError, KeyError, IndexError, StopIteration) as error:
            last = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def condition(obj: dict, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in obj.get("status", {}).get("conditions", []))


def trainjobs(bed, namespace: str) -> list[dict]:
    return items(bed, "trainjobs.trainer.kubeflow.org", namespace)


def jobset(bed, namespace: str, name: str, timeout: float = 90) -> dict:
    return wait_for(f"JobSet {namespace}/{name}",
                    lambda: bed.get("jobsets.jobset.x-k8s.io", "-n", namespace, name), timeout=timeout)


def wait_trainjob_complete(bed, namespace: str, name: str, timeout: float = 120) -> dict:
    def done():
        tj = bed.get("trainjobs.trainer.kubeflow.org", "-n", namespace, name)
        if condition(tj, "Failed"):
            raise AssertionError(f"TrainJob {namespace}/{name} failed: {json.dumps(tj.get('status'))}")
        return tj if condition(tj, "Complete") else None
    return wait_for(f"TrainJob {namespace}/{name} to complete", done, timeout=timeout)


def node_job(js: dict) -> dict:
    return next(r for r in js["spec"]["replicatedJobs"] if r["name"] == "node")


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_node_job(bed, namespace: str, rendered_tj: dict, values: dict) -> dict:
    """The JobSet the Trainer built: nodes, processes, resources, tolerations and volumes as requested."""
    training = values["training"]
    assert not [e for e in rendered_tj["spec"]["trainer"].get("env", []) if e["name"].startswith("PET_")], \
        "the chart sets PET_* itself; the Trainer must"
    js = jobset(bed, namespace, rendered_tj["metadata"]["name"])
    job = node_job(js)["template"]["spec"]
    assert job["parallelism"] == job["completions"] == training["numNodes"]
    pod = job["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "node")
    env = env_of(container)
    assert env["PET_NNODES"] == str(training["numNodes"])
    assert env["PET_NPROC_PER_NODE"] == str(training["numProcPerNode"])
    assert env["PET_MASTER_PORT"] == "29500"
    assert "PET_NODE_RANK" in env and "PET_MASTER_ADDR" in env
    limits = container["resources"]["limits"]
    for key, value in training["resources"]["limits"].items():
        assert str(limits[key]) == str(value), (key, limits)
    gpus = training["gpusPerNode"]
    assert str(limits.get("nvidia.com/gpu", 0)) == str(gpus)
    for toleration in training["tolerations"]:
        assert toleration in pod.get("tolerations", [])
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v}
    shared = values["sharedStorage"]["existingClaim"] or None
    assert claims and (shared is None or shared in claims)
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    return js


def create_namespace(bed, name: str) -> None:
    bed.kubectl("create", "namespace", name)


def what_is_left(bed, namespace: str) -> set[tuple[str, str]]:
    """(kind, name) of every object left in the namespace, but what Kubernetes itself puts in every namespace."""
    kinds = ("pods,jobs,statefulsets,services,configmaps,secrets,serviceaccounts,persistentvolumeclaims,"
             "networkpolicies,roles,rolebindings,trainjobs.trainer.kubeflow.org,"
             "trainingruntimes.trainer.kubeflow.org,jobsets.jobset.x-k8s.io")
    left = set()
    for obj in items(bed, kinds, namespace):
        kind, name = obj["kind"], obj["metadata"]["name"]
        if (kind, name) in {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}:
            continue
        if obj["metadata"].get("deletionTimestamp"):
            continue
        left.add((kind, name))
    return left
