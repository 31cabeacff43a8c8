"""Each hardware profile and chart-testing values file, installed on the control plane: admitted, trained, tested,
uninstalled to exactly what the chart README says is kept."""

from __future__ import annotations

import base64
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from clusterlib import (CHART, ON_LATEST, REPO, check_node_job, condition, create_namespace, env_of, helm, install,
                        items, manifest, rendered_trainjob, trainjobs, unique, wait_for, wait_trainjob_complete,
                        what_is_left)

pytestmark = pytest.mark.cluster

PROFILES = {
    "cpu": ["values/cpu.yaml"],
    "gpu1": ["values/gpu1.yaml"],
    "gpu4": ["values/gpu4.yaml"],
    "external-postgres": ["values/cpu.yaml", "values/external-postgres.yaml"],
    "openshift": ["values/gpu4.yaml", "values/openshift.yaml"],
    # The Spark master and workers: Deployments with a Service, read-only shared claim, NetworkPolicy port ranges.
    "scale-spark": ["values/cpu.yaml", "values/scale-spark.yaml"],
    "ci-default": ["charts/salesfc/ci/default-values.yaml"],
    "ci-external-postgres": ["charts/salesfc/ci/external-postgres-values.yaml"],
    "ci-gpu4-openshift": ["charts/salesfc/ci/gpu4-openshift-values.yaml"],
    "ci-namespaced-kaggle": ["charts/salesfc/ci/namespaced-kaggle-values.yaml"],
    "ci-postgres-tls": ["charts/salesfc/ci/postgres-tls-values.yaml"],
}


def merged_values(files: list[str], sets: dict | None = None) -> dict:
    """The chart's values as Helm merges them (values.yaml, then each file; maps merge, the rest replaces)."""
    def merge(base, over):
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in files:
        merge(values, yaml.safe_load((REPO / f).read_text()) or {})
    return values


def secret(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def claim(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}


def prerequisites(profile: str, values: dict, postgres_server) -> tuple[list[dict], dict]:
    """What a user creates before installing this profile, and --set values pointing at the in-test server."""
    external = values["postgresql"]["external"]
    objects, sets = [], {}
    if external["enabled"]:
        objects.append(secret(external["existingSecret"], **{external["secretKey"]: postgres_server.password}))
        if external.get("caSecret"):
            objects.append(secret(external["caSecret"], **{external["caSecretKey"]: a_self_signed_certificate()[0]}))
        sets = {"postgresql.external.host": postgres_server.host, "postgresql.external.port": postgres_server.port,
                "postgresql.external.user": postgres_server.user, "postgresql.external.database": "postgres"}
    tls = values["postgresql"]["tls"]
    if tls["enabled"] and not external["enabled"]:
        certificate, key = a_self_signed_certificate()
        objects.append(secret(tls["existingSecret"], **{"tls.crt": certificate, "tls.key": key, "ca.crt": certificate}))
    if profile == "ci-namespaced-kaggle":
        objects += [claim(values["data"]["kaggle"]["existingClaim"]), claim(values["sharedStorage"]["existingClaim"]),
                    secret(values["postgresql"]["auth"]["existingSecret"], password="kept-by-the-team"),
                    {"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": values["serviceAccount"]["name"]}}]
    return objects, sets


def check_serving(bed, namespace: str, rendered: list[dict], replicas: int) -> None:
    """The API server took the forecast service's objects, restricted Pod Security its pods, and they fit together:
    every replica available and counted by the PodDisruptionBudget (KWOK runs the pods Ready; no code runs)."""
    def of_serve(o: dict) -> bool:
        name = o["metadata"]["name"]
        return o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "serve" or \
            name.endswith(("-serve", "-serve-clients"))
    serve = [o for o in rendered if o["kind"] in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy")
             and of_serve(o)]
    assert sorted(o["kind"] for o in serve) == ["Deployment", "NetworkPolicy", "NetworkPolicy",
                                                "PodDisruptionBudget", "Service"], [o["kind"] for o in serve]
    for obj in serve:
        assert bed.get(obj["kind"].lower(), "-n", namespace, obj["metadata"]["name"])["metadata"]["uid"]
    name = next(o["metadata"]["name"] for o in serve if o["kind"] == "Deployment")
    wait_for(f"Deployment {name} available with {replicas} ready pods", lambda: (lambda d: d if condition(
        d, "Available") and d["status"].get("readyReplicas") == replicas else None)(
        bed.get("deployment", "-n", namespace, name)))
    budget = next(o["metadata"]["name"] for o in serve if o["kind"] == "PodDisruptionBudget")
    wait_for(f"PodDisruptionBudget {budget} counting the {replicas} pods", lambda: (lambda b: b if b.get(
        "status", {}).get("expectedPods") == replicas else None)(bed.get("pdb", "-n", namespace, budget)))


def a_self_signed_certificate() -> tuple[str, str]:
    """(certificate, key): a certificate that is its own CA."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{folder}/ca.key",
                        "-out", f"{folder}/ca.crt", "-days", "1", "-subj", "/CN=salesfc-cluster-test-ca"],
                       check=True, capture_output=True)
        return Path(folder, "ca.crt").read_text(), Path(folder, "ca.key").read_text()


def check_ca_mount(job: dict, ca_secret: str | None, ca_key: str) -> None:
    """With a CA Secret, libpq's PGSSLROOTCERT names the certificate mounted from it."""
    spec = job["spec"]["template"]["spec"]
    container = spec["containers"][0]
    root_cert = env_of(container).get("PGSSLROOTCERT")
    if not ca_secret:
        assert root_cert is None
        return
    volume = next(v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == ca_secret)
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert root_cert == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
    assert volume["secret"]["items"][0]["key"] == ca_key


def check_database_settings(bed, namespace: str, job: dict) -> None:
    """The settings a pod gets (host, port, database, user, the password from the Secret) open the server."""
    import psycopg

    container = job["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    ref = next(e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "SALESFC_PG_PASSWORD")
    data = bed.get("secret", "-n", namespace, ref["name"])["data"]
    password = base64.b64decode(data[ref["key"]]).decode()
    # The in-test server speaks no TLS; sslmode has a test of its own.
    with psycopg.connect(host=env["SALESFC_PG_HOST"], port=int(env["SALESFC_PG_PORT"]),
                         dbname=env["SALESFC_PG_DATABASE"], user=env["SALESFC_PG_USER"], password=password,
                         sslmode="disable", connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def check_spark_cluster(bed, namespace: str, replicas: int) -> None:
    """The Spark master and its workers are up (Helm waited for them), spread over nodes, and the master's Service
    selects the master."""
    def component(name):
        return [p for p in items(bed, "pods", namespace, f"app.kubernetes.io/component={name}")
                if p["status"].get("phase") == "Running"]
    masters, workers = component("spark-master"), component("spark-worker")
    assert len(masters) == 1 and len(workers) == replicas, (len(masters), len(workers))
    # The bed has 3 untainted nodes: the preferred anti-affinity puts the 4 workers on all of them.
    assert len({p["spec"]["nodeName"] for p in workers}) == min(replicas, 3), workers
    service = next(s for s in items(bed, "services", namespace) if s["metadata"]["name"].endswith("-spark-master"))
    assert service["spec"]["selector"].items() <= masters[0]["metadata"]["labels"].items()


@ON_LATEST
@pytest.mark.parametrize("profile", PROFILES)
def test_profile_installs_trains_tests_and_uninstalls(bed, profile, postgres_server):
    files = PROFILES[profile]
    values = merged_values(files)
    namespace = unique(profile)
    create_namespace(bed, namespace)
    objects, sets = prerequisites(profile, values, postgres_server)
    if objects:
        bed.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))
    release = "salesfc"
    install(bed, release, namespace, files, sets)

    rendered = manifest(bed, release, namespace)
    assert not [o for o in rendered if o["kind"] == "TrainJob"], "Helm must not create the TrainJob itself"
    rendered_tj = rendered_trainjob(rendered)
    live = trainjobs(bed, namespace)
    assert [t["metadata"]["name"] for t in live] == [rendered_tj["metadata"]["name"]]
    js = check_node_job(bed, namespace, rendered_tj, values)
    if values["serving"]["enabled"]:
        check_serving(bed, namespace, rendered, values["serving"]["replicas"])

    pods = wait_for("the trainer pods", lambda: [
        p for p in items(bed, "pods", namespace, f"jobset.sigs.k8s.io/jobset-name={js['metadata']['name']}")
        if p["spec"].get("nodeName")] or None)
    gpu_nodes = {p["spec"]["nodeName"] for p in pods}
    if values["training"]["gpusPerNode"]:
        assert gpu_nodes == {"gpu-0"}, "GPU trainer pods must land on the GPU node"
    else:
        assert "gpu-0" not in gpu_nodes, "CPU trainer pods must not take the tainted GPU node"

    # Order, as the chart README tells it: the runtime and the inference Job with the release (inference waits for
    # the model), then the prep hook, which Helm waits for, then the launch hook, which creates the TrainJob: so its
    # trainer pods are made after prep has finished. (KWOK runs no code but the launch hook's, so the waiting itself
    # is not seen here; tests/integration runs the stages in order for real.)
    prep = next(j for j in items(bed, "jobs", namespace) if j["metadata"]["labels"].get(
        "app.kubernetes.io/component") == "prep")
    assert condition(prep, "Complete")
    external, tls = values["postgresql"]["external"], values["postgresql"]["tls"]
    if external["enabled"]:
        check_database_settings(bed, namespace, prep)
        check_ca_mount(prep, external.get("caSecret"), external["caSecretKey"])
    else:
        # The in-cluster server's own TLS Secret holds the CA too (KWOK runs no PostgreSQL: the server's side of
        # it is tests/integration/test_database_tls.py's).
        check_ca_mount(prep, tls["existingSecret"] if tls["enabled"] else None, "ca.crt")
    wait_trainjob_complete(bed, namespace, rendered_tj["metadata"]["name"])
    infer_name = next(o["metadata"]["name"] for o in rendered if o["kind"] == "Job")
    infer = wait_for("the inference Job", lambda: (lambda j: j if condition(j, "Complete") else None)(
        bed.get("job", "-n", namespace, infer_name)))
    runtime = next(o for o in rendered if o["kind"] in ("ClusterTrainingRuntime", "TrainingRuntime"))
    created = {kind: obj["metadata"]["creationTimestamp"] for kind, obj in (
        ("runtime", bed.get(f"{runtime['kind'].lower()}s.trainer.kubeflow.org", *(
            ["-n", namespace] if runtime["kind"] == "TrainingRuntime" else []), runtime["metadata"]["name"])),
        ("trainjob", live[0]), ("infer", infer), ("prep", prep))}
    launch = next(j for j in items(bed, "jobs", namespace) if j["metadata"]["labels"].get(
        "app.kubernetes.io/component") == "launch")
    assert condition(launch, "Complete")
    created.update(prep_done=prep["status"]["completionTime"], launch=launch["metadata"]["creationTimestamp"],
                   pods=min(p["metadata"]["creationTimestamp"] for p in pods))
    assert created["runtime"] <= created["prep"] <= created["prep_done"] <= created["launch"] <= created["trainjob"] \
        <= created["pods"], created
    assert created["infer"] <= created["prep"], created
    owners = live[0]["metadata"]["ownerReferences"]
    configmap = next(o for o in rendered if o["kind"] == "ConfigMap" and "trainjob.yaml" in o.get("data", {}))
    assert [(o["kind"], o["name"]) for o in owners] == [("ConfigMap", configmap["metadata"]["name"])], owners

    if values["featureStore"]["offlineStore"] == "spark":
        check_spark_cluster(bed, namespace, values["featureStore"]["spark"]["workers"]["replicas"])

    helm(bed, "test", release, "-n", namespace, "--timeout", "2m")

    # Uninstall keeps what the README says: resources marked keep, the database claim, the hooks (prep, test).
    hooks = [d for d in yaml.safe_load_all(helm(bed, "get", "hooks", release, "-n", namespace).stdout) if d]
    expected = {(o["kind"], o["metadata"]["name"]) for o in objects}
    expected |= {(o["kind"], o["metadata"]["name"]) for o in rendered
                 if o["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep"}
    expected |= {(h["kind"], h["metadata"]["name"]) for h in hooks}
    for sts in (o for o in rendered if o["kind"] == "StatefulSet"):
        if sts["spec"].get("persistentVolumeClaimRetentionPolicy", {}).get("whenDeleted") == "Retain":
            for template in sts["spec"]["volumeClaimTemplates"]:
                expected.add(("PersistentVolumeClaim", f"{template['metadata']['name']}-{sts['metadata']['name']}-0"))
    hook_jobs = {h["metadata"]["name"] for h in hooks if h["kind"] == "Job"}
    helm(bed, "uninstall", release, "-n", namespace, "--wait", "--timeout", "2m")

    def settled():
        left = what_is_left(bed, namespace)
        # A kept Job keeps its pods.
        left = {(k, n) for k, n in left if not (k == "Pod" and any(n.startswith(f"{j}-") for j in hook_jobs))}
        return left if left == expected else None
    wait_for(f"exactly {sorted(expected)} to be left", settled, timeout=90)
    if runtime["kind"] == "ClusterTrainingRuntime":
        left = bed.kubectl("get", "clustertrainingruntimes.trainer.kubeflow.org", runtime["metadata"]["name"],
                           check=False)
        assert left.returncode != 0 and "NotFound" in left.stderr
    uninstall_section = (CHART / "README.md").read_text().split("## Uninstall")[1].split("\n## ")[0]
    for kind, name in expected:
        said = {"Job": f"{name.rsplit('-', 1)[-1]} Job", "Pod": "`helm test` pod"}.get(kind)
        if said:
            assert said in uninstall_section, f"the chart README does not say {kind} {name} is kept"
