"""Upgrades, a second release, a lost trainer pod and a refused database change, against the real controllers."""

from __future__ import annotations

import json
import time

import pytest

from clusterlib import (ON_ALL, ON_LATEST, condition, helm, install, items, jobset, manifest, trainjobs, unique,
                        upgrade, wait_for, wait_trainjob_complete)
import control_plane

pytestmark = pytest.mark.cluster

CPU = ["values/cpu.yaml"]


def the_trainjob(bed, namespace: str) -> dict:
    live = trainjobs(bed, namespace)
    assert len(live) == 1, [t["metadata"]["name"] for t in live]
    return live[0]


@ON_ALL
def test_upgrade_retrains_only_when_training_changes(bed):
    namespace = unique("upgrade")
    install(bed, "salesfc", namespace, CPU)
    first = the_trainjob(bed, namespace)
    wait_trainjob_complete(bed, namespace, first["metadata"]["name"])

    upgrade(bed, "salesfc", namespace, CPU)
    same = the_trainjob(bed, namespace)
    assert same["metadata"]["uid"] == first["metadata"]["uid"], "an upgrade that changes nothing retrained"

    upgrade(bed, "salesfc", namespace, CPU, {"training.epochs": 41})
    second = wait_for("the old TrainJob to go", lambda: (lambda t: t if len(t) == 1 else None)(
        trainjobs(bed, namespace)))[0]
    assert second["metadata"]["name"] != first["metadata"]["name"]
    assert {e["name"]: e.get("value") for e in second["spec"]["trainer"]["env"]}["SALESFC_EPOCHS"] == "41"
    jobset(bed, namespace, second["metadata"]["name"])
    wait_trainjob_complete(bed, namespace, second["metadata"]["name"])

    # A rollback to the first values trains them again (the launch hook runs after a rollback too).
    helm(bed, "rollback", "salesfc", "1", "-n", namespace, "--wait")
    back = wait_for("the first values' TrainJob alone", lambda: (lambda t: t if len(t) == 1 and t[0]["metadata"][
        "name"] == first["metadata"]["name"] else None)(trainjobs(bed, namespace)))[0]
    assert back["metadata"]["uid"] != first["metadata"]["uid"]
    wait_trainjob_complete(bed, namespace, back["metadata"]["name"])
    helm(bed, "uninstall", "salesfc", "-n", namespace, "--wait")


@ON_ALL
def test_twenty_installs_in_a_row_are_never_denied(bed):
    """The install race is gone: created with the release, the TrainJob came milliseconds after its runtime, and
    Trainer v2.1's webhook (whose runtime cache had not caught up) denied 7 of about 58 installs on this bed, v2.3's
    once. Created by the launch hook after prep, it is admitted every time, here through twenty installs and
    uninstalls of one release back to back (without --wait: Helm still waits for its hooks)."""
    namespace = unique("again")
    denials = 0
    for attempt in range(20):
        install(bed, "salesfc", namespace, CPU, extra=())
        tj = the_trainjob(bed, namespace)
        launch = max((p for p in items(bed, "pods", namespace, "app.kubernetes.io/component=launch")
                      if not p["metadata"].get("deletionTimestamp")), key=lambda p: p["metadata"]["creationTimestamp"])
        log = (bed.root / "pods" / f"{namespace}.{launch['metadata']['name']}.log").read_text()
        assert f"TrainJob {namespace}/{tj['metadata']['name']} created" in log, log
        denials += log.count("has not seen the runtime yet")
        helm(bed, "uninstall", "salesfc", "-n", namespace, "--wait")
    print(f"Trainer {bed.trainer}: 20 installs, {denials} webhook denials retried by the launch hook")


@ON_LATEST
def test_same_release_name_in_two_namespaces_does_not_collide(bed):
    spaces = [unique("twin"), unique("twin")]
    for namespace in spaces:
        install(bed, "salesfc", namespace, CPU)
    runtimes = [next(o["metadata"]["name"] for o in manifest(bed, "salesfc", ns)
                     if o["kind"] == "ClusterTrainingRuntime") for ns in spaces]
    assert runtimes[0] != runtimes[1]
    for namespace in spaces:
        wait_trainjob_complete(bed, namespace, the_trainjob(bed, namespace)["metadata"]["name"])
    helm(bed, "uninstall", "salesfc", "-n", spaces[0], "--wait")
    # The other release's runtime and training are untouched.
    bed.get("clustertrainingruntimes.trainer.kubeflow.org", runtimes[1])
    assert condition(the_trainjob(bed, spaces[1]), "Complete")
    helm(bed, "uninstall", "salesfc", "-n", spaces[1], "--wait")


@ON_LATEST
def test_a_lost_trainer_pod_restarts_the_jobset_within_the_limit(bed):
    """The bed fails every pod of a JobSet's first attempt in this namespace (a lost node): with a restart
    allowed, the JobSet starts a second attempt that completes; with none, the training fails for good."""
    namespace = control_plane.FAIL_ONCE_NAMESPACE
    install(bed, "salesfc", namespace, CPU, {"training.maxRestarts": 1})
    tj = the_trainjob(bed, namespace)
    done = wait_trainjob_complete(bed, namespace, tj["metadata"]["name"], timeout=180)
    js = bed.get("jobsets.jobset.x-k8s.io", "-n", namespace, tj["metadata"]["name"])
    assert js["status"].get("restarts") == 1, js["status"]
    assert condition(done, "Complete")

    # Only the runtime changes: a new runtime (failurePolicy is immutable) and so a new TrainJob.
    upgrade(bed, "salesfc", namespace, CPU, {"training.maxRestarts": 0})
    old = tj["metadata"]["name"]
    tj = wait_for("the new TrainJob alone", lambda: (lambda t: t[0] if len(t) == 1 and t[0]["metadata"]["name"]
                                                     != old else None)(trainjobs(bed, namespace)))

    def failed_for_good():
        live = bed.get("trainjobs.trainer.kubeflow.org", "-n", namespace, tj["metadata"]["name"])
        return live if condition(live, "Failed") else None
    wait_for("the TrainJob without restarts to fail", failed_for_good, timeout=180)
    helm(bed, "uninstall", "salesfc", "-n", namespace, "--wait")


@ON_ALL
def test_a_runtime_only_upgrade_leaves_a_running_training_alone(bed):
    """The runtime is not immutable, and the Trainer builds JobSets from it: an upgrade that changes only the runtime
    (here the trainer pods' /dev/shm) while a TrainJob runs must neither retrain nor disturb that run. The bed keeps
    the trainer pods in HOLD_NAMESPACE running until the test lets them finish."""
    namespace = control_plane.HOLD_NAMESPACE
    install(bed, "salesfc", namespace, CPU)
    tj = the_trainjob(bed, namespace)
    name = tj["metadata"]["name"]
    js = jobset(bed, namespace, name)
    selector = f"jobset.sigs.k8s.io/jobset-name={name}"

    def running_pods():
        pods = items(bed, "pods", namespace, selector)
        return pods if pods and all(p["status"].get("phase") == "Running" for p in pods) else None
    pods = wait_for("the trainer pods to run", running_pods)

    upgrade(bed, "salesfc", namespace, CPU, {"training.shmSize": "2Gi"})
    runtime = next(o for o in manifest(bed, "salesfc", namespace) if o["kind"].endswith("TrainingRuntime"))
    live_runtime = bed.get(f"{runtime['kind'].lower()}s.trainer.kubeflow.org", runtime["metadata"]["name"],
                           *(["-n", namespace] if runtime["kind"] == "TrainingRuntime" else []))
    assert "2Gi" in json.dumps(live_runtime["spec"]), "the upgrade did not reach the runtime"
    time.sleep(5)  # the controllers' reconcile of the changed runtime, had it touched the running training
    after = the_trainjob(bed, namespace)
    assert after["metadata"]["uid"] == tj["metadata"]["uid"], "a runtime-only upgrade retrained"
    assert not condition(after, "Failed"), after.get("status")
    live_js = bed.get("jobsets.jobset.x-k8s.io", "-n", namespace, name)
    assert live_js["metadata"]["uid"] == js["metadata"]["uid"] and not condition(live_js, "Failed"), live_js["status"]
    assert sorted(p["metadata"]["uid"] for p in running_pods() or []) == sorted(p["metadata"]["uid"] for p in pods), \
        "the running trainer pods were replaced"

    for pod in pods:
        bed.kubectl("annotate", "pod", "-n", namespace, pod["metadata"]["name"],
                    f"{control_plane.RELEASE_ANNOTATION}=true")
    wait_trainjob_complete(bed, namespace, name)
    helm(bed, "uninstall", "salesfc", "-n", namespace, "--wait")


@ON_LATEST
def test_a_new_database_volume_size_is_refused_with_what_to_do(bed):
    """The API server refuses any change of a StatefulSet's volume claim template, and with it the whole upgrade;
    the chart says so first, naming the claim to resize instead."""
    namespace = unique("pgsize")
    install(bed, "salesfc", namespace, CPU)
    statefulset = next(o["metadata"]["name"] for o in manifest(bed, "salesfc", namespace) if o["kind"] == "StatefulSet")
    server = bed.kubectl("patch", "-n", namespace, "statefulset", statefulset, "--type=json", "-p",
                         '[{"op": "replace", "path": "/spec/volumeClaimTemplates/0/spec/resources/requests/storage",'
                         ' "value": "9Gi"}]', check=False)
    assert server.returncode != 0 and "Forbidden" in server.stderr, server.stderr
    result = helm(bed, "upgrade", "salesfc", str(control_plane.REPO / "charts" / "salesfc"), "-n", namespace,
                  "-f", str(control_plane.REPO / "values" / "cpu.yaml"), "--set", "postgresql.persistence.size=9Gi",
                  check=False)
    assert result.returncode != 0
    assert "postgresql.persistence.size cannot change from 8Gi to 9Gi" in result.stderr, result.stderr
    assert f"data-{statefulset}-0" in result.stderr
    assert "STATUS: deployed" in helm(bed, "status", "salesfc", "-n", namespace).stdout
    helm(bed, "uninstall", "salesfc", "-n", namespace, "--wait")
