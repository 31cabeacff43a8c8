"""Every rendered manifest against the schemas the API server would apply: Kubernetes' own (strict), the Kubeflow
Trainer CRDs of v2.1.0 and v2.3.0 with their CEL rules, and JobSet's for the runtime's template."""

from __future__ import annotations

import pytest

from chartlib import (HELMS, NAMESPACE, TRAINER_VERSIONS, case_id, pod_specs, render, shared_file, values_cases)
from k8sschemas import K8S_VERSIONS, cel_errors, crd_errors, crd_schema, k8s_errors

pytestmark = pytest.mark.chart

TRAINER_KINDS = {"TrainJob": "trainjobs", "ClusterTrainingRuntime": "clustertrainingruntimes",
                 "TrainingRuntime": "trainingruntimes"}
BUILT_IN = {"v1", "apps/v1", "batch/v1", "networking.k8s.io/v1", "policy/v1", "autoscaling/v2",
            "rbac.authorization.k8s.io/v1"}
# The TrainJob's name rules, the only CEL rules at a TrainJob's root: checked here by hand too, so that a new rule in a
# later Trainer release is noticed (the set below must then be extended).
KNOWN_ROOT_RULES = {"self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')", "size(self.metadata.name) <= 63"}


def jobset_release(trainer: str) -> str:
    return shared_file("trainer", trainer, "JOBSET_VERSION").read_text().strip()


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_kinds_are_known(helm, files):
    """Only kinds this file validates: a new kind must get a schema check here first."""
    for obj in render(helm, files).documents:
        api, kind = obj["apiVersion"], obj["kind"]
        assert api in BUILT_IN or (api == "trainer.kubeflow.org/v1alpha1" and kind in TRAINER_KINDS), \
            f"{api} {kind} is rendered but not validated by these tests"


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_builtin_objects_match_kubernetes_schemas(files, k8s):
    rendered = render("helm4", files)
    checked = set()
    errors = []
    for obj in rendered.objects:
        if obj["apiVersion"] in BUILT_IN:
            errors += [f"{obj['kind']}/{obj['metadata']['name']}: {e}" for e in k8s_errors(obj, k8s)]
            checked.add(obj["kind"])
    assert {"ConfigMap", "Job", "Pod", "Role", "RoleBinding"} <= checked, f"only {sorted(checked)} were validated"
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_runtime_pod_template_matches_kubernetes_job_schema(files, k8s):
    """The runtime's replicated Job template is a batch/v1 Job spec: validate it as one (CRDs embed an old PodSpec)."""
    runtime = render("helm4", files).runtime
    errors = []
    for rjob in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        metadata = {"name": "x", **rjob["template"].get("metadata", {})}
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": rjob["template"]["spec"]}
        errors += [f"replicatedJobs {rjob['name']}: {e}" for e in k8s_errors(job, k8s)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("trainer", TRAINER_VERSIONS)
@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_trainer_objects_match_crds(files, trainer):
    rendered = render("helm4", files)
    objects = [o for o in rendered.objects if o["kind"] in TRAINER_KINDS]
    assert [o["kind"] for o in objects] == [rendered.runtime["kind"]], "Helm itself creates no TrainJob"
    objects.append(rendered.trainjob)
    errors = []
    for obj in objects:
        plural = TRAINER_KINDS[obj["kind"]]
        where = f"{obj['kind']}/{obj['metadata']['name']} (Trainer {trainer})"
        errors += [f"{where}: {e}" for e in crd_errors(obj, plural, trainer)]
        schema = crd_schema("trainer.kubeflow.org", "v1alpha1", plural, trainer)
        cel, ran = cel_errors(obj, schema)
        errors += [f"{where}: {e}" for e in cel]
        if obj["kind"] == "TrainJob":
            root_rules = {r["rule"] for r in schema.get("x-kubernetes-validations", [])}
            assert root_rules == KNOWN_ROOT_RULES, f"Trainer {trainer} has new TrainJob rules: {root_rules}"
            assert ran >= len(KNOWN_ROOT_RULES)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("trainer", TRAINER_VERSIONS)
@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_runtime_template_matches_jobset_crd(files, trainer):
    """The runtime's spec.template.spec is a JobSet spec: validate it against the JobSet release the Trainer uses."""
    runtime = render("helm4", files).runtime
    errors = crd_errors(runtime["spec"]["template"]["spec"], "jobsets", jobset_release(trainer),
                        schema_path=("spec",), group="jobset.x-k8s.io")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_runtime_shape_is_what_every_trainer_release_expects(files):
    """DESIGN §5: mlPolicy {numNodes, torch: {}}, one replicated job `node` (replicas 1, ancestor label, container
    `node`), the framework label, and none of the override APIs that changed between releases."""
    rendered = render("helm4", files)
    runtime, trainjob = rendered.runtime, rendered.trainjob
    assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    assert runtime["spec"]["mlPolicy"] == {"numNodes": trainjob["spec"]["trainer"]["numNodes"], "torch": {}}
    rjobs = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert [r["name"] for r in rjobs] == ["node"]
    node = rjobs[0]
    assert node["replicas"] == 1
    assert node["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert [c["name"] for c in node["template"]["spec"]["template"]["spec"]["containers"]] == ["node"]
    spec = trainjob["spec"]
    assert set(spec) == {"runtimeRef", "trainer"}, f"TrainJob spec has {sorted(spec)}: no overrides allowed"
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": runtime["kind"],
                                  "name": runtime["metadata"]["name"]}
    assert isinstance(spec["trainer"]["numProcPerNode"], int)
    assert not any(e["name"].startswith("PET_") for e in spec["trainer"]["env"])
    for _, _, pod in pod_specs(rendered):
        for container in pod["containers"]:
            assert not any(e["name"].startswith("PET_") for e in container.get("env", []))


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("kind", ["ClusterTrainingRuntime", "TrainingRuntime"])
def test_the_trainjob_is_launched_after_prep_by_a_hook_that_may_do_only_that(helm, kind):
    """The TrainJob is not Helm's: the launch hook creates it after prep's hook (a higher weight: Helm waits for
    prep's Job first), so the Trainer's webhook has long seen the runtime and no trainer pod waits for prep. The
    hook's Role allows its one ConfigMap and TrainJobs, nothing else."""
    rendered = render(helm, (), (f"training.runtime.kind={kind}",))
    prep, launch = rendered.one("Job", "prep"), rendered.one("Job", "launch")
    hooks = {name: job["metadata"]["annotations"] for name, job in (("prep", prep), ("launch", launch))}
    for events in ("post-install", "post-upgrade"):
        assert events in hooks["prep"]["helm.sh/hook"] and events in hooks["launch"]["helm.sh/hook"]
    assert int(hooks["launch"]["helm.sh/hook-weight"]) > int(hooks["prep"]["helm.sh/hook-weight"])
    configmap = rendered.one("ConfigMap", "trainer")
    pod = launch["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert pod["containers"][0]["command"] == ["salesfc", "launch"]
    assert env["SALESFC_TRAINJOB_CONFIGMAP"] == configmap["metadata"]["name"]
    assert env["SALESFC_NAMESPACE"] == NAMESPACE
    assert rendered.trainjob["spec"]["runtimeRef"]["kind"] == kind
    assert rendered.trainjob["metadata"]["namespace"] == NAMESPACE
    # Its token and its rights: only this pod mounts one, bound to a Role of exactly these rules.
    assert pod["automountServiceAccountToken"] is True
    others = [spec for where, _, spec in pod_specs(rendered) if not where.startswith(f"Job/{launch['metadata']['name']}")]
    assert all(spec.get("automountServiceAccountToken") is False for spec in others)
    role = rendered.one("Role", "launch")
    binding = rendered.one("RoleBinding", "launch")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": NAMESPACE}]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [configmap["metadata"]["name"]],
         "verbs": ["get"]},
        {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"],
         "verbs": ["get", "list", "create", "delete"]}]


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_helm3_and_helm4_render_the_same_objects(files):
    """The schema checks above read Helm 4's output; Helm 3's is the same (but for the random password)."""

    def without_secret_data(rendered):
        return [{**o, "data": "<generated>"} if o["kind"] == "Secret" else o for o in rendered.documents]

    assert without_secret_data(render("helm3", files)) == without_secret_data(render("helm4", files))
