"""Upgrade semantics and names: a changed TrainJob is a new TrainJob (its trainer and runtimeRef are immutable), an
unchanged one keeps its name and passes the CRD's transition rules; cluster-scoped names carry the namespace; every
name the chart and the Trainer derive stays within Kubernetes' limits."""

from __future__ import annotations

import re

import pytest

from chartlib import HELMS, pod_specs, render
from k8sschemas import cel_errors, crd_schema

pytestmark = pytest.mark.chart

# --set changes that alter what a TrainJob is made of (or the data it trains on): each must be a new TrainJob.
RETRAIN = [
    "training.epochs=41", "training.batchSize=512", "json:training.lr=0.004", "json:training.weightDecay=0.001",
    "training.hidden={128,64}", "json:training.dropout=0.3", "training.embedDim=16", "training.patience=7",
    "json:training.gradClip=0.5", "training.seed=1", "training.valWeeks=12", "training.testWeeks=25",
    "training.waitTimeout=7200", "training.device=auto", "training.amp=on", "training.numNodes=2",
    "training.numProcPerNode=1", "training.resources.limits.memory=7Gi", "training.runtime.kind=TrainingRuntime",
    "image.tag=0.1.1", "image.digest=sha256:" + "1" * 64, "image.repository=registry.test/salesfc",
    "data.size=small", "data.seed=8", "data.source=kaggle", "featureStore.offlineStore=postgres",
    # Immutable in the runtime (failurePolicy): a new runtime, so a new TrainJob.
    "training.maxRestarts=0",
]
# Changes that leave the TrainJob alone (the runtime, the database, inference, tests, policies).
KEEP_TRAINJOB = [
    "logLevel=DEBUG", "training.tolerations[0].key=gpu", "training.tolerations[0].operator=Exists",
    "training.shmSize=2Gi", "postgresql.resources.limits.memory=3Gi",
    "postgresql.tls.enabled=true,postgresql.tls.existingSecret=pg-tls,postgresql.sslmode=verify-full",
    "inference.plotSeries=3", "inference.waitTimeout=100", "json:tests.maxWmaeRatio=0.9", "networkPolicy.enabled=false",
    "sharedStorage.size=20Gi", "prep.waitTimeout=60",
]
# Of those, the ones that also leave the inference Job alone.
KEEP_INFERENCE = ["training.shmSize=2Gi", "training.tolerations[0].key=gpu", "training.tolerations[0].operator=Exists",
                  "json:tests.maxWmaeRatio=0.9", "networkPolicy.enabled=false", "sharedStorage.size=20Gi",
                  "prep.waitTimeout=60", "postgresql.resources.limits.memory=3Gi"]


def names(sets: tuple[str, ...] = (), helm: str = "helm4", **kw) -> tuple[str, str, str]:
    rendered = render(helm, (), sets, **kw)
    return (rendered.trainjob["metadata"]["name"], rendered.infer_job()["metadata"]["name"],
            rendered.runtime["metadata"]["name"])


@pytest.mark.parametrize("helm", HELMS)
def test_same_values_same_names(helm):
    assert names((), helm) == names(("postgresql.database=salesfc",), helm)  # a no-op change: a new render


def test_both_helms_compute_the_same_names():
    assert names((), "helm3") == names((), "helm4")


@pytest.mark.parametrize("change", RETRAIN)
def test_training_change_is_a_new_trainjob_and_inference(change):
    base = names()
    changed = names((change,))
    assert changed[0] != base[0], f"{change} keeps TrainJob {base[0]}: an upgrade would patch an immutable field"
    assert changed[1] != base[1], f"{change} keeps inference Job {base[1]}"
    if "runtime.kind" not in change and "maxRestarts" not in change:
        assert changed[2] == base[2], "the runtime's name must not depend on training values"


@pytest.mark.parametrize("trainer", ["v2.1.0", "v2.3.0"])
@pytest.mark.parametrize("change", KEEP_TRAINJOB)
def test_other_changes_keep_the_trainjob_and_pass_its_transition_rules(change, trainer):
    """Kept name => the update must satisfy the CRD's `self == oldSelf` rules on trainer and runtimeRef."""
    old = render("helm4").trainjob
    new = render("helm4", (), (change,)).trainjob
    assert new["metadata"]["name"] == old["metadata"]["name"], f"{change} retrains"
    errors, ran = cel_errors(new, crd_schema("trainer.kubeflow.org", "v1alpha1", "trainjobs", trainer), old=old)
    assert not errors, errors
    assert ran >= 3, "the transition rules did not run"


@pytest.mark.parametrize("change", KEEP_INFERENCE)
def test_unrelated_changes_keep_the_inference_job(change):
    """A Job's pod template is immutable: a kept name must mean an identical template."""
    old = render("helm4").infer_job()
    new = render("helm4", (), (change,)).infer_job()
    assert new["metadata"]["name"] == old["metadata"]["name"], change
    assert new["spec"]["template"] == old["spec"]["template"]


@pytest.mark.parametrize("change", sorted(set(KEEP_TRAINJOB) - set(KEEP_INFERENCE)))
def test_inference_changes_are_a_new_inference_job(change):
    old = render("helm4").infer_job()
    new = render("helm4", (), (change,)).infer_job()
    assert new["spec"]["template"] != old["spec"]["template"]
    assert new["metadata"]["name"] != old["metadata"]["name"], f"{change} changes the pod template of a kept Job"


def test_cluster_runtime_name_differs_across_namespaces():
    a = names(namespace="team-a")
    b = names(namespace="team-b")
    assert a[2] != b[2]
    assert "-team-a-" in a[2] and "-team-b-" in b[2]
    assert names(release="other", namespace="team-a")[2] != a[2]


def test_namespaced_runtime_lives_in_the_release_namespace():
    rendered = render("helm4", (), ("training.runtime.kind=TrainingRuntime",), namespace="team-a")
    assert rendered.runtime["metadata"]["namespace"] == "team-a"
    assert rendered.trainjob["spec"]["runtimeRef"]["kind"] == "TrainingRuntime"


DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

LONG_RELEASE = "quarterly-demand-forecast-for-all-stores-and-depts-xy"  # 53: Helm's longest release name
LONG_NAMESPACE = "retail-analytics-production-environment-europe-west-region-01"


@pytest.mark.parametrize("release,namespace", [("demo", "forecasting"), (LONG_RELEASE, LONG_NAMESPACE)])
@pytest.mark.parametrize("nodes", [1, 99])
def test_names_fit_kubernetes_limits(release, namespace, nodes):
    assert len(LONG_RELEASE) == 53
    rendered = render("helm4", (), (f"training.numNodes={nodes}", "training.numProcPerNode=1"),
                      release=release, namespace=namespace)
    problems = []
    for obj in rendered.objects:
        name = obj["metadata"]["name"]
        if not (DNS1123_SUBDOMAIN.match(name) and len(name) <= 253):
            problems.append(f"{obj['kind']} {name}: not a DNS subdomain")
        if obj["kind"] in ("Service", "TrainJob") and not (DNS1035.match(name) and len(name) <= 63):
            problems.append(f"{obj['kind']} {name}: not an RFC 1035 label")
        if obj["kind"] in ("Job", "StatefulSet", "ClusterTrainingRuntime", "TrainingRuntime", "NetworkPolicy",
                           "PersistentVolumeClaim", "ConfigMap", "Secret", "ServiceAccount", "Pod") \
                and len(name) > 63:
            problems.append(f"{obj['kind']} {name}: longer than 63")
        if obj["kind"] == "StatefulSet" and len(name) > 52:
            problems.append(f"StatefulSet {name}: its controller-revision-hash label would pass 63")
        for value in (obj["metadata"].get("labels") or {}).values():
            if len(str(value)) > 63:
                problems.append(f"{obj['kind']} {name}: label value {value} longer than 63")
    # JobSet (named after the TrainJob) refuses names whose Jobs or pods would pass 63 characters:
    # Job "<name>-node-<replica>", pod "<name>-node-<replica>-<index>-<5 random>" (jobset_webhook.go).
    trainjob = rendered.trainjob["metadata"]["name"]
    longest_job = f"{trainjob}-node-0"
    longest_pod = f"{trainjob}-node-0-{nodes - 1}-abcde"
    for derived in (longest_job, longest_pod):
        if not (DNS1035.match(derived) and len(derived) <= 63):
            problems.append(f"JobSet would refuse TrainJob {trainjob}: {derived} ({len(derived)} characters)")
    for where, meta, _ in pod_specs(rendered):
        for value in (meta.get("labels") or {}).values():
            if len(str(value)) > 63:
                problems.append(f"{where}: label value {value} longer than 63")
    assert not problems, "\n".join(problems)
    assert rendered.trainjob["metadata"]["name"].startswith(release[:20])


@pytest.mark.parametrize("trainer", ["v2.1.0", "v2.3.0"])
@pytest.mark.parametrize("change", [c for c in RETRAIN + KEEP_TRAINJOB if "runtime.kind" not in c])
def test_runtime_updates_pass_its_transition_rules(change, trainer):
    """A runtime that keeps its name is updated in place: its CRD's `self == oldSelf` rules (e.g. JobSet's
    failurePolicy is immutable) must hold for every change of values. A change of an immutable field must rename it
    (the API server refuses the patch: tests/cluster meets that answer)."""
    old = render("helm4").runtime
    new = render("helm4", (), (change,)).runtime
    if "maxRestarts" in change:
        assert new["metadata"]["name"] != old["metadata"]["name"]
        errors, _ = cel_errors(new, crd_schema("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes",
                                               trainer), old=old)
        assert errors, "the CRD accepts a changed failurePolicy: the rename is no longer needed"
        return
    assert new["metadata"]["name"] == old["metadata"]["name"]
    errors, _ = cel_errors(new, crd_schema("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", trainer),
                           old=old)
    assert not errors, errors


def data_ids(sets: tuple[str, ...] = ()) -> set[str]:
    """SALESFC_DATA_ID as prep, the trainer and inference see it."""
    rendered = render("helm4", (), sets)
    prep = rendered.one("Job", "prep")["spec"]["template"]["spec"]["containers"][0]["env"]
    trainer = rendered.trainjob["spec"]["trainer"]["env"]
    infer = rendered.infer_job()["spec"]["template"]["spec"]["containers"][0]["env"]
    return {next(e["value"] for e in env if e["name"] == "SALESFC_DATA_ID") for env in (prep, trainer, infer)}


def test_prep_training_and_inference_agree_on_the_data_they_mean():
    base = data_ids()
    assert len(base) == 1, "training must wait for exactly the data this release's prep makes"
    for change in ("data.size=small", "data.seed=8", "featureStore.offlineStore=postgres"):
        changed = data_ids((change,))
        assert len(changed) == 1 and changed != base, change
    assert data_ids(("training.epochs=41",)) == base
