"""launch: the chart's TrainJob, created once prep has finished (the chart's post-install/post-upgrade hook).

Why not a TrainJob in the release itself: Helm would create it milliseconds after its runtime, and the Trainer's
admission webhook reads runtimes from a cache that may not have it yet, denying the install ("... must be created
before the TrainJob"); and its trainer pods (GPUs included) would sit idle until prep, a later hook, had run. So
the chart renders the TrainJob into a ConfigMap, and this step, run by Helm after prep's hook, creates it:

- the TrainJob's name hashes everything it is made of, so one of that name already there is the same training:
  it is kept (an upgrade that changes nothing keeps its model, a running training is left alone);
- the release's other TrainJobs (those this step created before, owned by the same ConfigMap) are deleted first,
  so the GPUs they hold are free for the new one;
- the TrainJob is owned by the ConfigMap, so `helm uninstall` (which deletes the ConfigMap) takes it, its JobSet
  and its pods with it, through Kubernetes' garbage collector;
- a denial by the Trainer's webhook for a runtime it has not seen yet is retried until --wait-timeout, and so is a
  TrainJob of the same name still being deleted.
"""

from __future__ import annotations

import json
import logging
import os
import time

import yaml

from salesfc.errors import UserError

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
MANIFEST_KEY = "trainjob.yaml"
# What the Trainer's webhook says when its cache has not seen the runtime yet (v2.1 and v2.3).
NOT_YET_SEEN = "must be created before the TrainJob"
RETRY_SECONDS = 2.0


def run(config) -> int:
    core, custom, namespace = clients(config.namespace)
    owner = read_configmap(core, config.trainjob_configmap, namespace)
    job = trainjob_of(owner)
    name = job["metadata"]["name"]
    for old in earlier_trainjobs(custom, namespace, owner):
        if old["metadata"]["name"] != name or not owned_by(old, owner.metadata.uid):
            delete(custom, namespace, old["metadata"]["name"])
    found = settled(custom, namespace, name, config.wait_timeout)
    if found is not None:
        if not owned_by(found, owner.metadata.uid):
            raise UserError(f"TrainJob {namespace}/{name} exists and is not this release's (it is not owned by "
                            f"ConfigMap {owner.metadata.name}): delete it (kubectl -n {namespace} delete trainjob "
                            f"{name}) and run the upgrade again")
        print(f"launch: TrainJob {namespace}/{name} already exists, the same training: kept", flush=True)
        return 0
    create(custom, namespace, job, config.wait_timeout)
    print(f"launch: TrainJob {namespace}/{name} created on {job['spec']['runtimeRef']['kind']} "
          f"{job['spec']['runtimeRef']['name']}", flush=True)
    return 0


def clients(namespace: str | None):
    """Kubernetes API clients: in-cluster from the pod's service account token, else the kubeconfig."""
    import warnings

    from kubernetes import client, config
    from kubernetes.config import ConfigException
    from urllib3.exceptions import InsecureRequestWarning

    # A kubeconfig with insecure-skip-tls-verify is the user's choice: say so once, not at every request.
    warnings.filterwarnings("once", category=InsecureRequestWarning)

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
    except ConfigException as err:
        raise UserError(f"no cluster to launch on: {str(err).rstrip('.')}; run it in the release's hook pod or "
                        f"point KUBECONFIG at the cluster") from None
    if not namespace:
        raise UserError("--namespace (SALESFC_NAMESPACE) is required: the release's namespace")
    api = client.ApiClient()
    return client.CoreV1Api(api), client.CustomObjectsApi(api), namespace


def _reason(err) -> str:
    try:
        return json.loads(err.body).get("message", err.body)
    except (TypeError, ValueError):
        return err.body or err.reason


def read_configmap(core, name: str | None, namespace: str):
    from kubernetes.client import ApiException

    if not name:
        raise UserError("--trainjob-configmap (SALESFC_TRAINJOB_CONFIGMAP) is required: the ConfigMap the chart "
                        "renders the TrainJob into")
    try:
        return core.read_namespaced_config_map(name, namespace)
    except ApiException as err:
        if err.status == 404:
            raise UserError(f"--trainjob-configmap {name}: no ConfigMap {name} in namespace {namespace}; it is the "
                            f"release's (<release>-salesfc-trainjob): check the release and the namespace") from None
        raise UserError(f"--trainjob-configmap {name}: could not read it ({_reason(err)})") from None


def trainjob_of(configmap) -> dict:
    """The TrainJob in the ConfigMap, owned by the ConfigMap (not blocking its deletion: that would need a right
    to update the ConfigMap's finalizers, which OpenShift enforces)."""
    name = configmap.metadata.name
    text = (configmap.data or {}).get(MANIFEST_KEY)
    try:
        job = yaml.safe_load(text) if text else None
    except yaml.YAMLError as err:
        raise UserError(f"ConfigMap {name}: {MANIFEST_KEY} is not YAML ({err})") from None
    if not isinstance(job, dict) or job.get("kind") != "TrainJob" or not job.get("metadata", {}).get("name"):
        raise UserError(f"ConfigMap {name}: {MANIFEST_KEY} must hold one named TrainJob (the chart renders it)")
    # Helm does not manage it: say who does (as `salesfc submit` labels its own).
    job["metadata"].setdefault("labels", {})["app.kubernetes.io/managed-by"] = "salesfc-launch"
    job["metadata"]["ownerReferences"] = [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": configmap.metadata.uid,
        "blockOwnerDeletion": False, "controller": False}]
    return job


def owned_by(trainjob: dict | None, uid: str) -> bool:
    return trainjob is not None and any(ref.get("uid") == uid
                                        for ref in trainjob["metadata"].get("ownerReferences") or [])


def earlier_trainjobs(custom, namespace: str, configmap) -> list[dict]:
    """The TrainJobs this step created for the release: owned by its ConfigMap, or by a ConfigMap of the same name
    that is gone (an install before an uninstall, whose garbage collection may still be under way). Never one a
    user submitted."""
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return [item for item in listed
            if any(ref.get("kind") == "ConfigMap" and ref.get("name") == configmap.metadata.name
                   for ref in item["metadata"].get("ownerReferences") or [])]


def custom_get(custom, namespace: str, name: str) -> dict | None:
    from kubernetes.client import ApiException

    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise UserError(f"could not read TrainJob {namespace}/{name}: {_reason(err)}") from None


def settled(custom, namespace: str, name: str, timeout: float) -> dict | None:
    """The TrainJob of that name, or None; one being deleted is waited for until it is gone."""
    deadline = time.monotonic() + timeout
    while True:
        found = custom_get(custom, namespace, name)
        if found is None or not found["metadata"].get("deletionTimestamp"):
            return found
        if time.monotonic() >= deadline:
            raise UserError(f"TrainJob {namespace}/{name} is still being deleted after --wait-timeout {timeout:.0f} s; "
                            f"run the upgrade again once it is gone (kubectl -n {namespace} get trainjob {name})")
        log.info("TrainJob %s/%s is being deleted; waiting until it is gone", namespace, name)
        time.sleep(RETRY_SECONDS)


def delete(custom, namespace: str, name: str) -> None:
    from kubernetes.client import ApiException

    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                               propagation_policy="Background")
    except ApiException as err:
        if err.status != 404:
            raise UserError(f"could not delete the release's earlier TrainJob {namespace}/{name}: "
                            f"{_reason(err)}") from None
        return
    print(f"launch: TrainJob {namespace}/{name} of the release's earlier settings deleted", flush=True)


def create(custom, namespace: str, job: dict, timeout: float) -> None:
    from kubernetes.client import ApiException

    name = job["metadata"]["name"]
    deadline = time.monotonic() + timeout
    while True:
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
            return
        except ApiException as err:
            reason = _reason(err)
            if NOT_YET_SEEN in str(reason) and time.monotonic() < deadline:
                log.info("the Trainer's webhook has not seen the runtime yet (%s); retrying", reason)
                time.sleep(RETRY_SECONDS)
                continue
            if err.status == 409:  # created meanwhile by another run of this step: the same training
                return
            raise UserError(f"the cluster refused TrainJob {namespace}/{name}: {reason}") from None
