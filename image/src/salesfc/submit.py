"""submit: training as a Kubeflow TrainJob on a salesfc release's runtime, through the Kubeflow SDK (``kubeflow``).

What runs is the image's own ``torchrun -m salesfc train``, as in the chart's TrainJob: the SDK's
``CustomTrainerContainer`` names the image, nodes, resources and environment (the training settings as SALESFC_*
variables); the runtime brings everything else (volumes, feature store settings, security contexts, scheduling).

The TrainJob is built from the SDK's own pieces: ``TrainerClient.get_runtime`` finds the runtime (a TrainingRuntime
in the namespace first, then a ClusterTrainingRuntime) and carries its kind, which goes into ``runtimeRef.kind``;
the SDK turns the ``CustomTrainerContainer`` into the TrainJob's ``trainer``. It is not sent with
``TrainerClient.train()`` because that has no way to set ``trainer.numProcPerNode`` (its options set only the
command and args), so it is created through the SDK client's Kubernetes API instead, with the same models. Waiting,
logs and status go through ``TrainerClient``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from salesfc import settings
from salesfc.errors import UserError

log = logging.getLogger(__name__)

PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
INSTANCE = "app.kubernetes.io/instance"
# The Trainer names the JobSet after the TrainJob, and JobSet refuses pod names ("<name>-node-0-<index>-<5 chars>")
# over 63 characters (see the chart's trainJobName).
MAX_NAME = 47
POLL_SECONDS = 5
TRAINER_SETTINGS = tuple(s for s in settings.for_command("submit") if "train" in s.commands
                         and s.name not in ("log_level", "nproc_per_node", "run_id"))


def run(config) -> int:
    name = config.run_id or datetime.now(timezone.utc).strftime("train-%Y%m%d-%H%M%S")
    if len(name) > MAX_NAME:
        raise UserError(f"--run-id {name}: a TrainJob name has at most {MAX_NAME} characters (its pods are named "
                        f"<name>-node-0-<index>-<5 characters>, at most 63); choose a shorter one")
    client = connect(config.namespace)
    namespace = client.backend.namespace
    runtime, labels = find_runtime(client, config.runtime)
    job = trainjob(runtime, labels, name, config)
    create(client, job)
    trainer = job.spec.trainer
    processes = trainer.num_proc_per_node or "the Trainer's choice of"
    print(f"submit: TrainJob {namespace}/{name} created on {runtime.kind.value} {runtime.name}: "
          f"{trainer.num_nodes or runtime.trainer.num_nodes} node(s) x {processes} process(es), image {trainer.image}")
    print(f"submit: watch it: kubectl -n {namespace} get trainjob {name} -o jsonpath='{{.status.trainerStatus}}'; "
          f"logs: kubectl -n {namespace} logs -l jobset.sigs.k8s.io/jobset-name={name} -f")
    if config.follow:
        follow(client, name, config.job_timeout)
    if config.wait or config.follow:
        return wait(client, name, config.job_timeout)
    return 0


def connect(namespace: str | None):
    import warnings

    from urllib3.exceptions import InsecureRequestWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's pydantic models, at import
        from kubeflow.trainer import KubernetesBackendConfig, TrainerClient
    from kubernetes.config import ConfigException

    # A kubeconfig with insecure-skip-tls-verify is the user's choice: say so once, not at every request.
    warnings.filterwarnings("once", category=InsecureRequestWarning)

    try:
        return TrainerClient(KubernetesBackendConfig(namespace=namespace))
    except ConfigException as err:
        raise UserError(f"no cluster to submit to: {str(err).rstrip('.')}; point KUBECONFIG at the cluster's "
                        f"kubeconfig") from None


def _api_status(err: BaseException) -> int | None:
    from kubernetes.client import ApiException

    while err is not None:
        if isinstance(err, ApiException):
            return err.status
        err = err.__cause__
    return None


def find_runtime(client, name: str | None):
    """The SDK's Runtime (name, kind, image, nodes) of a salesfc runtime, and the runtime's labels."""
    from kubeflow.trainer.constants import constants

    namespace = client.backend.namespace
    if not name:
        raise UserError(f"--runtime (SALESFC_RUNTIME) is required: the training runtime of a salesfc release; "
                        f"{ours_here(client)}")
    try:
        runtime = client.get_runtime(name)
    except (RuntimeError, TimeoutError) as err:
        status = _api_status(err)
        if status == 404:
            raise UserError(f"--runtime {name}: there is no TrainingRuntime {name} in namespace {namespace} and no "
                            f"ClusterTrainingRuntime {name}; {ours_here(client)}") from None
        reason = err.__cause__ or err
        if status is None and "label" in str(reason):
            raise UserError(f"--runtime {name} is not a salesfc training runtime ({reason}); "
                            f"{ours_here(client)}") from None
        raise UserError(f"--runtime {name}: could not read it from the cluster ({reason})") from None
    api = client.backend.custom_api
    if runtime.kind.value == "TrainingRuntime":
        obj = api.get_namespaced_custom_object(constants.GROUP, constants.VERSION, namespace,
                                               constants.TRAINING_RUNTIME_PLURAL, name)
    else:
        obj = api.get_cluster_custom_object(constants.GROUP, constants.VERSION,
                                            constants.CLUSTER_TRAINING_RUNTIME_PLURAL, name)
    labels = obj["metadata"].get("labels") or {}
    if labels.get(PART_OF) != "salesfc" or labels.get(COMPONENT) != "trainer":
        raise UserError(f"--runtime {name}: the {runtime.kind.value} {name} is not a salesfc training runtime (it "
                        f"lacks the labels {PART_OF}=salesfc and {COMPONENT}=trainer, so its pods would have no "
                        f"shared volume or feature store settings); {ours_here(client)}")
    return runtime, labels


def ours_here(client) -> str:
    """Which salesfc runtimes this user can see, as the end of an error message."""
    from kubeflow.trainer.constants import constants

    api = client.backend.custom_api
    selector = f"{PART_OF}=salesfc,{COMPONENT}=trainer"
    found = []
    for kind, listing in (
            ("TrainingRuntime", lambda: api.list_namespaced_custom_object(
                constants.GROUP, constants.VERSION, client.backend.namespace, constants.TRAINING_RUNTIME_PLURAL,
                label_selector=selector)),
            ("ClusterTrainingRuntime", lambda: api.list_cluster_custom_object(
                constants.GROUP, constants.VERSION, constants.CLUSTER_TRAINING_RUNTIME_PLURAL,
                label_selector=selector))):
        try:
            found += [f"{kind} {item['metadata']['name']}" for item in listing()["items"]]
        except Exception as err:  # noqa: BLE001 - only a hint: a user may not list cluster-scoped objects
            log.debug("could not list %ss: %s", kind, err)
    if not found:
        return ("no salesfc runtime is visible here: install the chart (helm install) or pick the namespace "
                "with --namespace")
    return "salesfc runtimes here: " + ", ".join(found)


def resources(config) -> dict:
    wanted = {"cpu": config.cpu, "memory": config.memory, "nvidia.com/gpu": config.gpus}
    # Quantities as text: the SDK would send a number as a float ("4.0").
    return {key: str(value) for key, value in wanted.items() if value is not None}


def trainjob(runtime, runtime_labels: dict, name: str, config):
    """The TrainJob, as the SDK's models: its trainer from a CustomTrainerContainer, runtimeRef from the Runtime."""
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.backends.kubernetes import utils as sdk_utils
    from kubeflow.trainer.constants import constants
    from kubeflow_trainer_api import models

    env = settings.as_environment({s.name: getattr(config, s.name) for s in TRAINER_SETTINGS}, "submit")
    env["SALESFC_RUN_ID"] = name  # the TrainJob's name is its model's run id, as in the chart
    container = CustomTrainerContainer(image=config.image or runtime.trainer.image, num_nodes=config.num_nodes,
                                       resources_per_node=resources(config) or None, env=env)
    trainer = sdk_utils.get_trainer_cr_from_custom_trainer(runtime, container)
    trainer.command = ["torchrun"]
    trainer.args = ["-m", "salesfc", "train"]
    if config.nproc_per_node:
        trainer.num_proc_per_node = config.nproc_per_node
    labels = {PART_OF: "salesfc", COMPONENT: "trainer", "app.kubernetes.io/managed-by": "salesfc-submit"}
    if INSTANCE in runtime_labels:
        labels[INSTANCE] = runtime_labels[INSTANCE]
    return models.TrainerV1alpha1TrainJob(
        apiVersion=constants.API_VERSION, kind=constants.TRAINJOB_KIND,
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=name, labels=labels),
        spec=models.TrainerV1alpha1TrainJobSpec(
            runtimeRef=models.TrainerV1alpha1RuntimeRef(apiGroup=constants.GROUP, kind=runtime.kind.value,
                                                        name=runtime.name),
            trainer=trainer))


def create(client, job) -> None:
    import json

    from kubeflow.trainer.constants import constants
    from kubernetes.client import ApiException

    name, namespace = job.metadata.name, client.backend.namespace
    try:
        client.backend.custom_api.create_namespaced_custom_object(
            constants.GROUP, constants.VERSION, namespace, constants.TRAINJOB_PLURAL, job.to_dict())
    except ApiException as err:
        try:
            reason = json.loads(err.body).get("message", err.body)
        except (TypeError, ValueError):
            reason = err.body or err.reason
        if err.status == 409:
            raise UserError(f"--run-id {name}: a TrainJob {name} already exists in namespace {namespace}; choose "
                            f"another run id (or delete it: kubectl -n {namespace} delete trainjob {name})") from None
        raise UserError(f"the cluster refused TrainJob {namespace}/{name}: {reason}") from None


def trainer_status(client, name: str) -> dict:
    """status.trainerStatus of the TrainJob (Trainer v2.3+ with TrainJobStatus; the SDK's TrainJob lacks it)."""
    from kubeflow.trainer.constants import constants

    obj = client.backend.custom_api.get_namespaced_custom_object(
        constants.GROUP, constants.VERSION, client.backend.namespace, constants.TRAINJOB_PLURAL, name)
    return (obj.get("status") or {}).get("trainerStatus") or {}


def describe(status: dict) -> str:
    parts = []
    if "progressPercentage" in status:
        parts.append(f"{status['progressPercentage']}% done")
    if "estimatedRemainingSeconds" in status:
        parts.append(f"about {int(status['estimatedRemainingSeconds']) // 60} min left")
    parts += [f"{m['name']} {m['value']}" for m in status.get("metrics", [])]
    return ", ".join(parts)


def wait(client, name: str, timeout: int) -> int:
    from kubeflow.trainer.constants import constants

    namespace = client.backend.namespace
    seen = {"last": None}

    def show_progress(_job) -> None:
        status = trainer_status(client, name)
        if status and status.get("lastUpdatedTime") != seen["last"]:
            seen["last"] = status.get("lastUpdatedTime")
            print(f"submit: {name}: {describe(status)}", flush=True)

    timeout = max(timeout, 2)  # the SDK wants its polling interval below the timeout
    try:
        job = client.wait_for_job_status(name, status={constants.TRAINJOB_COMPLETE, constants.TRAINJOB_FAILED},
                                         timeout=timeout, polling_interval=min(POLL_SECONDS, timeout - 1),
                                         callbacks=[show_progress])
    except TimeoutError:
        raise UserError(f"TrainJob {namespace}/{name} has not finished after --job-timeout {timeout} s; it goes on "
                        f"(kubectl -n {namespace} get trainjob {name})") from None
    except RuntimeError as err:
        raise UserError(f"lost track of TrainJob {namespace}/{name}: {err.__cause__ or err}") from None
    show_progress(job)
    if job.status == constants.TRAINJOB_FAILED:
        print(f"submit: TrainJob {namespace}/{name} failed; its log: kubectl -n {namespace} logs "
              f"-l jobset.sigs.k8s.io/jobset-name={name} --tail 50")
        return 1
    print(f"submit: TrainJob {namespace}/{name} completed; its model: /shared/models/{name}/ on the release's "
          f"shared volume")
    return 0


def follow(client, name: str, timeout: int) -> None:
    """Rank 0's log (node 0's pod), streamed from the moment the pod has started until it ends."""
    from kubeflow.trainer.constants import constants

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(name)
        started = [step for step in job.steps if step.name == f"{constants.NODE}-0"
                   and step.status != constants.POD_PENDING]
        if started or job.status in (constants.TRAINJOB_COMPLETE, constants.TRAINJOB_FAILED):
            break
        time.sleep(POLL_SECONDS)
    for line in client.get_job_logs(name, follow=True):
        print(line.rstrip("\n"), flush=True)
