"""A real Kubernetes control plane on 127.0.0.1 for the chart's cluster tests (tests/cluster, pytest -m cluster).

etcd, kube-apiserver, kube-controller-manager and kube-scheduler (v1.34.4), KWOK (simulated nodes and pod
lifecycles), the JobSet controller and the Kubeflow Trainer controller manager with their admission webhooks on.
scripts/build-control-plane.sh builds the binaries; scripts/install-chart-tools.sh provides kubectl.

    python scripts/control_plane.py up --trainer v2.3.0 --dir /tmp/cp   # prints the KUBECONFIG to use
    python scripts/control_plane.py up --trainer v2.3.0 --dir /tmp/cp --feature-gates TrainJobStatus=true
    python scripts/control_plane.py down --dir /tmp/cp

What the bed has, and why:
- Nodes: three CPU nodes and one 4-GPU node (``nvidia.com/gpu: 4``, tainted ``nvidia.com/gpu:NoSchedule``).
  KWOK runs their pods: Job pods complete, ``helm test`` pods (hook annotation ``test``) succeed, other pods
  stay Running and Ready. Pods of the namespace ``salesfc-fail-once`` in a JobSet's first attempt fail instead,
  so a test can show what a lost trainer pod does. The chart's launch hook pods alone really run: the bed's pod
  runner runs their command on this machine as their ServiceAccount (see RUN_HERE_SELECTOR).
- Restricted Pod Security enforced on every namespace but the controllers' own.
- A default StorageClass with no provisioner and hostPath PersistentVolumes (RWO, ROX, RWX) so claims bind.
- The controllers run as processes, not pods. Their certificate rotators write the webhook Secret and then wait
  for it as files in /tmp/k8s-webhook-server/serving-certs (the kubelet's job in a cluster): each controller runs
  in a mount namespace of its own (``unshare -m``) where a private folder is bind-mounted there, and the bed copies
  the Secret's files in. The webhook Services become ``ExternalName: localhost`` and the webhook configurations
  name the controller's local port, so the API server calls 127.0.0.1 (EndpointSlices may not point at loopback).
- Manifests come from the JobSet and Trainer Go modules, built with ``kubectl kustomize``; the Trainer's release
  overlay pulls JobSet from a download URL, a line the bed drops (JobSet comes from its own module instead).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml
from processes import free_port

REPO = Path(__file__).resolve().parents[1]
TOOLS = Path(os.environ.get("TOOLS_DIR", REPO / ".tools")).resolve()
CP_BIN = TOOLS / "controlplane" / "bin"

ETCD_VERSION = "v3.6.16"
K8S_VERSION = "v1.34.4"
KWOK_VERSION = "v0.8.0"
JOBSET_FOR_TRAINER = {"v2.1.0": "v0.10.1", "v2.3.0": "v0.12.0"}
TRAINER_VERSIONS = tuple(JOBSET_FOR_TRAINER)

CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
CONTROLLER_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "jobset-system", "kubeflow-system")
FAIL_ONCE_NAMESPACE = "salesfc-fail-once"
# In HOLD_NAMESPACE a JobSet's pods keep running until they carry RELEASE_ANNOTATION: "true" (a training that takes
# its time, for what happens to a TrainJob while it runs).
HOLD_NAMESPACE = "salesfc-hold"
RELEASE_ANNOTATION = "salesfc.test/release"
NODE_LABEL = {"type": "kwok"}
# Pods KWOK cannot fake: the chart's launch hook must really call the API server (it creates the release's
# TrainJob). The bed's pod runner (``run-pods``) runs their container's command on this machine as the pod's
# ServiceAccount (a token from the TokenRequest API, so the release's RBAC applies) and writes the outcome into the
# pod's status, as a kubelet would. Any other pod is KWOK's.
RUN_HERE_SELECTOR = "app.kubernetes.io/part-of=salesfc,app.kubernetes.io/component=launch"
RUN_HERE_TIMEOUT_S = 300
RUN_HERE_POLL_S = 1.5

# KWOK's pod delays (ms): short, so a test does not wait, but not zero, so phases are seen in order.
POD_DELAY_MS, POD_JITTER_MS = 200, 300


class BedError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[control-plane] {message}", file=sys.stderr, flush=True)


def binary(name: str, version: str) -> Path:
    path = CP_BIN / f"{name}-{version}"
    if not os.access(path, os.X_OK):
        raise BedError(f"{path} is missing: run scripts/build-control-plane.sh first")
    return path


def kubectl_path() -> str:
    for candidate in (TOOLS / "bin" / "kubectl",):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise BedError(f"{TOOLS}/bin/kubectl is missing: run scripts/install-chart-tools.sh first")


def module_dir(module: str) -> Path:
    """The extracted folder of module@version in the Go module cache (downloads it when needed)."""
    out = subprocess.run(["go", "mod", "download", "-json", module], capture_output=True, text=True,
                         env={**os.environ, "GOFLAGS": "-mod=mod"}, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise BedError(f"go mod download {module} failed: {out.stderr or out.stdout}")
    return Path(json.loads(out.stdout)["Dir"])


@dataclass
class Bed:
    """One running control plane: its folder, ports and processes."""

    trainer: str
    root: Path
    # Trainer feature gates to turn on, e.g. ("TrainJobStatus=true",): its controller's --feature-gates.
    feature_gates: tuple[str, ...] = ()
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def jobset(self) -> str:
        return JOBSET_FOR_TRAINER[self.trainer]

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def env(self) -> dict:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    # -- kubectl ---------------------------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([kubectl_path(), *args], input=input, capture_output=True, text=True,
                                env=self.env(), timeout=timeout)
        if check and result.returncode != 0:
            raise BedError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def apply(self, objects: list[dict]) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=control-plane", "-f", "-",
                     input=yaml.safe_dump_all(objects))

    def retry(self, what: str, attempt, timeout: float = 120, interval: float = 0.5):
        """Call attempt() until it returns a true value (errors count as 'not yet'), or fail naming ``what``."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                result = attempt()
                if result:
                    return result
            except (BedError, subprocess.SubprocessError, OSError, ValueError) as error:
                last = error
            time.sleep(interval)
        raise BedError(f"timed out after {timeout:.0f} s waiting for {what}" + (f": {last}" if last else ""))

    # -- processes -------------------------------------------------------------------------------------------------
    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        logfile = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        logfile.close()
        self.procs[name] = proc
        with open(self.root / "pids", "a") as pids:
            pids.write(f"{proc.pid} {name}\n")
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
                raise BedError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        """Stop every process this bed started (whole process groups: unshare execs the controller in place)."""
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, proc in reversed(list(self.procs.items())):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def leftover_processes(self) -> list[str]:
        """Processes still alive whose command line names this bed's folder (there must be none after stop)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(self.root) in cmdline and int(entry.name) != os.getpid():
                found.append(f"{entry.name}: {cmdline.strip()}")
        return found

    # -- start-up --------------------------------------------------------------------------------------------------
    def up(self) -> "Bed":
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "pids").write_text("")
        for name in ("etcd", "etcd_peer", "apiserver", "jobset_webhook", "trainer_webhook", "jobset_health",
                     "trainer_health", "kwok", "trainer_status"):
            self.ports[name] = free_port()
        self._keys()
        self._start_etcd()
        self._start_apiserver()
        self._start_kube_controllers()
        self._cluster_objects()
        self._start_kwok()
        self._start_jobset()
        self._start_trainer()
        self.start("pod-runner", [sys.executable, str(Path(__file__).resolve()), "run-pods", "--dir", str(self.root),
                                  "--trainer", self.trainer])
        log(f"up in {time.monotonic() - started:.0f} s: Trainer {self.trainer}, JobSet {self.jobset}, "
            f"KUBECONFIG={self.kubeconfig}")
        return self

    def _keys(self) -> None:
        key = self.root / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(self.root / "sa.pub")],
                       check=True, capture_output=True)
        token = base64.b32encode(os.urandom(20)).decode().lower()
        # The one identity everybody uses: an administrator (system:masters) by static token.
        (self.root / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "bed",
            "clusters": [{"name": "bed", "cluster": {"server": f"https://127.0.0.1:{self.ports['apiserver']}",
                                                     "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [{"name": "bed", "context": {"cluster": "bed", "user": "admin"}}],
        }))
        self.kubeconfig.chmod(0o600)

    def _start_etcd(self) -> None:
        p = self.ports
        self.start("etcd", [
            str(binary("etcd", ETCD_VERSION)), "--data-dir", str(self.root / "etcd"), "--name", "bed",
            "--listen-client-urls", f"http://127.0.0.1:{p['etcd']}",
            "--advertise-client-urls", f"http://127.0.0.1:{p['etcd']}",
            "--listen-peer-urls", f"http://127.0.0.1:{p['etcd_peer']}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{p['etcd_peer']}",
            "--initial-cluster", f"bed=http://127.0.0.1:{p['etcd_peer']}",
            # A throw-away store: no fsync, so the bed does not wait on the disk.
            "--unsafe-no-fsync", "--log-level", "warn"])

    def _start_apiserver(self) -> None:
        admission = self.root / "admission.yaml"
        admission.write_text(yaml.safe_dump({
            "apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration",
            "plugins": [{"name": "PodSecurity", "configuration": {
                "apiVersion": "pod-security.admission.config.k8s.io/v1", "kind": "PodSecurityConfiguration",
                "defaults": {"enforce": "restricted", "enforce-version": "latest",
                             "warn": "restricted", "warn-version": "latest"},
                "exemptions": {"namespaces": list(CONTROLLER_NAMESPACES), "usernames": [], "runtimeClasses": []},
            }}]}))
        self.start("kube-apiserver", [
            str(binary("kube-apiserver", K8S_VERSION)),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}", f"--cert-dir={self.root / 'apiserver'}",
            f"--token-auth-file={self.root / 'tokens.csv'}", "--authorization-mode=Node,RBAC",
            # First the issuer a process here can discover (/.well-known/openid-configuration on this API server):
            # the Trainer's status server verifies the trainer pods' tokens through it. Tokens of the usual cluster
            # issuer are still accepted.
            f"--service-account-issuer=https://127.0.0.1:{self.ports['apiserver']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.root / 'sa.pub'}",
            f"--service-account-signing-key-file={self.root / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=false",
            f"--admission-control-config-file={admission}",
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,"
            "DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota,"
            "PodSecurity,StorageObjectInUseProtection,TaintNodesByCondition,Priority,RuntimeClass",
            "--endpoint-reconciler-type=none", "-v=1"])
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def healthy() -> bool:
            self.check_alive()
            url = f"https://127.0.0.1:{self.ports['apiserver']}/readyz"
            with urllib.request.urlopen(url, context=context, timeout=2) as response:
                return response.status == 200
        self.retry("kube-apiserver /readyz", healthy, timeout=120)
        version = json.loads(self.kubectl("get", "--raw", "/version").stdout)
        if version.get("gitVersion") != K8S_VERSION:
            raise BedError(f"kube-apiserver reports {version.get('gitVersion')}, not {K8S_VERSION}")

    def _start_kube_controllers(self) -> None:
        self.start("kube-controller-manager", [
            str(binary("kube-controller-manager", K8S_VERSION)), f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
            f"--service-account-private-key-file={self.root / 'sa.key'}", "--leader-elect=false",
            "--bind-address=127.0.0.1", "--secure-port=0", "--use-service-account-credentials=false",
            # Pods on a deleted or silent node are gone at once rather than after five minutes.
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route", "-v=1"])
        self.start("kube-scheduler", [
            str(binary("kube-scheduler", K8S_VERSION)), f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0", "-v=1"])

    def _cluster_objects(self) -> None:
        objects: list[dict] = []
        resources_cpu = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"}
        nodes = [(f"cpu-{i}", resources_cpu, []) for i in range(3)]
        nodes.append(("gpu-0", {**resources_cpu, "cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "4"},
                      [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]))
        for name, capacity, taints in nodes:
            objects.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {**NODE_LABEL, "kubernetes.io/hostname": name,
                                                      "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
                             "annotations": {"kwok.x-k8s.io/node": "fake"}},
                "spec": {"taints": taints},
                "status": {"capacity": capacity, "allocatable": capacity},
            })
        # The default class, and "nfs-csi" as the OpenShift profile names it. Neither provisions: a released volume
        # is not bound again, so there are enough volumes for every claim of a test session.
        for storage_class, count, default in (("local", 150, "true"), ("nfs-csi", 20, "false")):
            objects.append({
                "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": storage_class,
                             "annotations": {"storageclass.kubernetes.io/is-default-class": default}},
                "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate",
                "reclaimPolicy": "Retain"})
            for i in range(count):
                name = f"{storage_class}-{i:03d}"
                objects.append({
                    "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
                    "spec": {"capacity": {"storage": "1Ti"}, "storageClassName": storage_class,
                             "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
                             "persistentVolumeReclaimPolicy": "Retain",
                             "hostPath": {"path": str(self.root / "volumes" / name)}}})
        for ns in ("jobset-system", "kubeflow-system"):
            objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        self.retry("the API server to take the nodes, storage and namespaces",
                   lambda: self.apply(objects) or True, timeout=60)

    def _kwok_stages(self) -> list[dict]:
        stages_dir = module_dir(f"sigs.k8s.io/kwok@{KWOK_VERSION}") / "kustomize" / "stage"
        stages = []
        for path in [stages_dir / "node" / "fast" / "node-initialize.yaml",
                     *sorted((stages_dir / "node" / "heartbeat-with-lease").glob("*.yaml")),
                     *sorted((stages_dir / "pod" / "general").glob("pod-*.yaml"))]:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "Stage":
                    stages.append(doc)
        first_attempt_here = (f'(.metadata.namespace == "{FAIL_ONCE_NAMESPACE}" and '
                              '.metadata.labels["jobset.sigs.k8s.io/restart-attempt"] == "0")')
        held = (f'(.metadata.namespace == "{HOLD_NAMESPACE}" and .metadata.labels["jobset.sigs.k8s.io/jobset-name"] '
                f'!= null and .metadata.annotations["{RELEASE_ANNOTATION}"] != "true")')
        run_here = '.metadata.labels["app.kubernetes.io/component"]'
        for stage in stages:
            spec = stage["spec"]
            if "delay" in spec and spec["resourceRef"]["kind"] == "Pod":
                spec["delay"]["durationMilliseconds"] = POD_DELAY_MS
                spec["delay"]["jitterDurationMilliseconds"] = POD_JITTER_MS
            if stage["metadata"]["name"] == "pod-complete":
                complete = stage
                spec["selector"]["matchExpressions"] += [
                    {"key": first_attempt_here, "operator": "NotIn", "values": ["true"]},
                    {"key": held, "operator": "NotIn", "values": ["true"]},
                    {"key": run_here, "operator": "NotIn", "values": ["launch"]}]
        # `helm test` pods have no owner: they succeed like Job pods.
        test_pods = json.loads(json.dumps(complete))
        test_pods["metadata"]["name"] = "pod-complete-helm-test"
        test_pods["spec"]["selector"]["matchExpressions"] = [
            e for e in test_pods["spec"]["selector"]["matchExpressions"] if "ownerReferences" not in e["key"]
        ] + [{"key": '.metadata.annotations["helm.sh/hook"]', "operator": "In", "values": ["test"]}]
        # The first attempt of a JobSet in FAIL_ONCE_NAMESPACE: its pods fail, as when a node is lost.
        fail = json.loads(json.dumps(complete))
        fail["metadata"]["name"] = "pod-fail-first-attempt"
        fail["spec"]["selector"]["matchExpressions"] = [
            e for e in fail["spec"]["selector"]["matchExpressions"] if e["key"] != first_attempt_here
        ] + [{"key": first_attempt_here, "operator": "In", "values": ["true"]}]
        fail["spec"]["next"]["statusTemplate"] = (
            fail["spec"]["next"]["statusTemplate"]
            .replace("exitCode: 0", "exitCode: 137").replace("reason: Completed", "reason: Error")
            .replace("phase: Succeeded", "phase: Failed"))
        return stages + [test_pods, fail]

    def _start_kwok(self) -> None:
        config = self.root / "kwok.yaml"
        config.write_text(yaml.safe_dump_all(self._kwok_stages()))
        self.start("kwok", [
            str(binary("kwok", KWOK_VERSION)), f"--kubeconfig={self.kubeconfig}", f"--config={config}",
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--cidr=10.0.0.1/16", "--node-ip=127.0.0.1",
            # Node leases as a kubelet keeps them: without them the node lifecycle controller marks every pod
            # NotReady after 40 s, and a StatefulSet stays "0 out of 1 ready" for the rest of the session.
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{self.ports['kwok']}"])

        def nodes_ready() -> bool:
            self.check_alive()
            items = self.get("nodes")["items"]
            return len(items) == 4 and all(
                any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
                for n in items)
        self.retry("KWOK to make the nodes Ready", nodes_ready, timeout=90)

    # -- JobSet and Trainer ----------------------------------------------------------------------------------------
    def _kustomize(self, folder: Path) -> list[dict]:
        out = self.kubectl("kustomize", str(folder), timeout=120).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    def _route_webhooks(self, objects: list[dict], service: str, port: int) -> list[dict]:
        """Drop the controller's Deployment; route its webhook Service to the local process."""
        kept = []
        for obj in objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            if kind == "Deployment":
                continue
            if kind == "Service" and name == service:
                obj["spec"] = {"type": "ExternalName", "externalName": "localhost",
                               "ports": [{"name": "webhook", "port": port, "targetPort": port}]}
            if kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
                for hook in obj.get("webhooks", []):
                    ref = hook["clientConfig"].get("service")
                    if ref and ref["name"] == service:
                        ref["port"] = port
            kept.append(obj)
        return kept

    def _install(self, objects: list[dict]) -> None:
        """CRDs first, until they serve; then the rest (each wait on a just-created CRD is retried)."""
        crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
        rest = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
        self.apply(crds)
        for crd in crds:
            name = crd["metadata"]["name"]
            self.retry(f"CRD {name} to be established", lambda: self.kubectl(
                "wait", "--for=condition=Established", "--timeout=10s", f"crd/{name}", timeout=30), timeout=90)
        self.retry("the controller's objects to apply", lambda: self.apply(rest) or True, timeout=90)

    def _start_controller(self, name: str, argv: list[str], namespace: str, secret: str,
                          service_account: Path | None = None) -> None:
        """Run a controller in its own mount namespace, feed it its webhook certificate, wait until it serves.
        ``service_account``: a folder to show it at /var/run/secrets/kubernetes.io/serviceaccount, as in a pod."""
        certs = self.root / f"{name}-certs"
        certs.mkdir(exist_ok=True)
        CERT_DIR.mkdir(parents=True, exist_ok=True)
        unshare = ["unshare", "-m", "--propagation", "private"]
        if os.geteuid() != 0:
            unshare.insert(1, "-r")  # a user namespace lets an ordinary user bind-mount
        script = 'mount --bind "$0" "$1" && shift && exec "$@"'
        if service_account:
            # A tmpfs over /run (/var/run) in the controller's own mount namespace only: the host has no
            # /run/secrets to mount on, and must not get one (clients take it as "running in a pod").
            script = ('mount --bind "$0" "$1" && mount -t tmpfs tmpfs /run && '
                      'mkdir -p /run/secrets/kubernetes.io/serviceaccount && '
                      f'mount --bind {service_account} /run/secrets/kubernetes.io/serviceaccount && shift && exec "$@"')
        self.start(name, [*unshare, "sh", "-c", script, str(certs), str(CERT_DIR), *argv],
                   env={"KUBECONFIG": str(self.kubeconfig)})

        def secret_written() -> bool:
            self.check_alive()
            data = self.get("secret", "-n", namespace, secret).get("data") or {}
            if not data.get("tls.crt") or not data.get("tls.key"):
                return False
            # tls.crt last: the controller's certificate watcher starts when that file appears.
            for key in sorted(data, key=lambda k: k == "tls.crt"):
                target = certs / key
                tmp = certs / f".{key}.tmp"
                tmp.write_bytes(base64.b64decode(data[key]))
                tmp.replace(target)
            return True
        self.retry(f"{name} to write its webhook certificate into Secret {namespace}/{secret}", secret_written,
                   timeout=120)

    def _wait_ready(self, name: str, port: int) -> None:
        def ready() -> bool:
            self.check_alive()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                return response.status == 200
        self.retry(f"{name} /readyz", ready, timeout=120)

    def _start_jobset(self) -> None:
        source = module_dir(f"sigs.k8s.io/jobset@{self.jobset}")
        objects = self._route_webhooks(self._kustomize(source / "config" / "default"), "jobset-webhook-service",
                                       self.ports["jobset_webhook"])
        self._install(objects)
        config = self.root / "jobset-config.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": True},
            "webhook": {"port": self.ports["jobset_webhook"], "host": "127.0.0.1"},
            "metrics": {"bindAddress": "0"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports['jobset_health']}"},
        }))
        self._start_controller("jobset", [str(binary("jobset", self.jobset)), f"--config={config}",
                                          "--metrics-bind-address=0",
                                          f"--health-probe-bind-address=127.0.0.1:{self.ports['jobset_health']}"],
                               "jobset-system", "jobset-webhook-server-cert")
        self._wait_ready("jobset", self.ports["jobset_health"])

        def webhook_answers() -> bool:
            # A dry-run create goes through the JobSet webhooks: this fails until the API server can call them.
            self.kubectl("create", "--dry-run=server", "-n", "default", "-f", "-", input=yaml.safe_dump({
                "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "probe"},
                "spec": {"replicatedJobs": [{"name": "a", "replicas": 1, "template": {"spec": {"template": {
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}}]}}))
            return True
        self.retry("the JobSet webhooks to answer", webhook_answers, timeout=90)

    def _service_account_folder(self, objects: list[dict]) -> Path:
        """What a pod of the Trainer's ServiceAccount finds in /var/run/secrets/kubernetes.io/serviceaccount. The
        status server reads the token's issuer from it (and verifies trainer pods' tokens against that issuer)."""
        account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]
        folder = self.root / "trainer-serviceaccount"
        folder.mkdir(exist_ok=True)
        token = self.retry("a token for the Trainer's ServiceAccount", lambda: self.kubectl(
            "create", "token", account["name"], "-n", account["namespace"], "--duration=24h").stdout.strip())
        (folder / "token").write_text(token)
        (folder / "namespace").write_text(account["namespace"])
        return folder

    def _start_trainer(self) -> None:
        source = module_dir(f"github.com/kubeflow/trainer/v2@{self.trainer}") / "manifests"
        work = self.root / "trainer-manifests"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(source, work)
        for path in work.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        overlay = work / "overlays" / "manager" / "kustomization.yaml"
        text = overlay.read_text()
        text, dropped = re.subn(r"(?m)^\s*-\s*\.\./\.\./third-party/jobset.*\n", "", text)
        if not dropped:
            raise BedError(f"{overlay}: no third-party/jobset line to drop (has the overlay changed?)")
        overlay.write_text(text)
        objects = self._kustomize(overlay.parent)
        config_map = next(o for o in objects if o["kind"] == "ConfigMap" and "controller_manager_config.yaml"
                          in o.get("data", {}))
        config = yaml.safe_load(config_map["data"]["controller_manager_config.yaml"])
        cert = config.get("certManagement", {})
        service = cert.get("webhookServiceName", "kubeflow-trainer-controller-manager")
        secret = cert.get("webhookSecretName", "kubeflow-trainer-webhook-cert")
        objects = self._route_webhooks(objects, service, self.ports["trainer_webhook"])
        self._install(objects)
        config["leaderElection"] = {"leaderElect": False}
        config["webhook"] = {"port": self.ports["trainer_webhook"], "host": "127.0.0.1"}
        config["metrics"] = {"bindAddress": "0"}
        config.setdefault("health", {})["healthProbeBindAddress"] = f"127.0.0.1:{self.ports['trainer_health']}"
        if "statusServer" in config:
            config["statusServer"]["port"] = self.ports["trainer_status"]
        path = self.root / "trainer-config.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [str(binary("trainer", self.trainer)), f"--config={path}"]
        service_account = None
        if self.feature_gates:
            argv.append(f"--feature-gates={','.join(self.feature_gates)}")
        if "TrainJobStatus=true" in self.feature_gates:
            service_account = self._service_account_folder(objects)
        self._start_controller("trainer", argv, "kubeflow-system", secret, service_account)
        self._wait_ready("trainer", self.ports["trainer_health"])

        def webhook_answers() -> bool:
            # The Trainer's webhook denies a TrainJob whose runtime does not exist; any other answer is "not yet".
            result = self.kubectl("create", "--dry-run=server", "-n", "default", "-f", "-", check=False,
                                  input=yaml.safe_dump({
                                      "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                                      "metadata": {"name": "probe"},
                                      "spec": {"runtimeRef": {"name": "no-such-runtime"}}}))
            return result.returncode != 0 and "denied the request" in result.stderr
        self.retry("the Trainer webhooks to answer", webhook_answers, timeout=90)


@contextlib.contextmanager
def running(trainer: str, root: Path | None = None, feature_gates: tuple[str, ...] = ()) -> Iterator[Bed]:
    """A control plane for the duration of the block; every process it started is gone afterwards."""
    if trainer not in JOBSET_FOR_TRAINER:
        raise BedError(f"Trainer {trainer} is not one of {', '.join(TRAINER_VERSIONS)}")
    owned = root is None
    root = Path(root or tempfile.mkdtemp(prefix=f"salesfc-bed-{trainer}-"))
    bed = Bed(trainer=trainer, root=root, feature_gates=tuple(feature_gates))
    try:
        bed.up()
        yield bed
    finally:
        bed.stop()
        left = bed.leftover_processes()
        if owned and not left:
            shutil.rmtree(root, ignore_errors=True)
        if left:
            raise BedError("processes left behind:\n" + "\n".join(left))


# -- the pod runner ------------------------------------------------------------------------------------------------
def _pod_command(container: dict) -> list[str]:
    argv = [*container.get("command", []), *container.get("args", [])]
    if not argv or argv[0] != "salesfc":
        raise BedError(f"the bed runs only salesfc commands here, not {argv}")
    return [sys.executable, "-m", "salesfc", *argv[1:]]


def _pod_env(container: dict) -> dict:
    env = {}
    for item in container.get("env", []):
        if "value" not in item:
            raise BedError(f"the bed passes only plain env values, not {item}")
        env[item["name"]] = item["value"]
    return env


def _token_kubeconfig(bed: Bed, namespace: str, account: str, path: Path) -> None:
    """A kubeconfig for the bed's API server as the ServiceAccount, not the administrator."""
    token = bed.kubectl("create", "token", account, "-n", namespace, "--duration=10m").stdout.strip()
    config = yaml.safe_load(bed.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def run_pod(bed: Bed, pod: dict) -> None:
    """Run a pod's one container here and report its end in the pod's status, as its kubelet would."""
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    container = pod["spec"]["containers"][0]
    folder = bed.root / "pods"
    folder.mkdir(exist_ok=True)
    kubeconfig = folder / f"{namespace}.{name}.kubeconfig"
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        _token_kubeconfig(bed, namespace, pod["spec"].get("serviceAccountName", "default"), kubeconfig)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **_pod_env(container),
               "KUBECONFIG": str(kubeconfig)}
        result = subprocess.run(_pod_command(container), env=env, capture_output=True, text=True,
                                timeout=RUN_HERE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        code, output = result.returncode, result.stdout + result.stderr
    except (BedError, subprocess.SubprocessError, OSError) as error:
        code, output = 128, f"the bed could not run it: {error}\n"
    (folder / f"{namespace}.{name}.log").write_text(output)
    log(f"ran pod {namespace}/{name}: exit {code}")
    status = {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [{
        "name": container["name"], "image": container["image"], "imageID": "", "ready": False,
        "restartCount": 0, "started": False,
        "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                 "message": output[-1000:], "startedAt": started,
                                 "finishedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}}]}
    bed.kubectl("patch", "pod", "-n", namespace, name, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": status}))


def run_pods(bed: Bed) -> None:
    """Run every pod of RUN_HERE_SELECTOR once KWOK has it Running (each once, in a thread of its own)."""
    import threading

    seen = set()
    while True:
        try:
            pods = bed.get("pods", "-A", "-l", RUN_HERE_SELECTOR)["items"]
        except (BedError, subprocess.SubprocessError, ValueError) as error:
            log(f"pod runner: {error}")
            pods = []
        for pod in pods:
            uid = pod["metadata"]["uid"]
            if uid in seen or pod.get("status", {}).get("phase") != "Running" or pod["metadata"].get(
                    "deletionTimestamp"):
                continue
            seen.add(uid)
            threading.Thread(target=run_pod, args=(bed, pod), daemon=True).start()
        # Each look is a kubectl process (about 60 ms of CPU): every 0.5 s it was a tenth of a core for the whole
        # session, on a 2-core machine that runs the control plane and the tests too.
        time.sleep(RUN_HERE_POLL_S)


def _down(root: Path) -> None:
    pids = root / "pids"
    if not pids.exists():
        raise BedError(f"{pids} does not exist: nothing started there")
    lines = [line.split(" ", 1) for line in pids.read_text().splitlines() if line.strip()]
    for pid, name in reversed(lines):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGTERM)
            log(f"stopped {name} ({pid})")
    time.sleep(2)
    for pid, _ in lines:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a control plane and leave it running (stop it with `down`)")
    up.add_argument("--trainer", choices=TRAINER_VERSIONS, default=TRAINER_VERSIONS[-1])
    up.add_argument("--dir", type=Path, required=True, help="folder for its state, logs and kubeconfig")
    up.add_argument("--feature-gates", default="", help="Trainer feature gates, e.g. TrainJobStatus=true (v2.3)")
    down = sub.add_parser("down", help="stop what `up` started in --dir")
    down.add_argument("--dir", type=Path, required=True)
    pods = sub.add_parser("run-pods", help="the bed's pod runner (`up` starts it): run the launch hook's pods here")
    pods.add_argument("--dir", type=Path, required=True)
    pods.add_argument("--trainer", choices=TRAINER_VERSIONS, default=TRAINER_VERSIONS[-1])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            gates = tuple(g for g in args.feature_gates.split(",") if g)
            bed = Bed(trainer=args.trainer, root=args.dir.resolve(), feature_gates=gates)
            try:
                bed.up()
            except BaseException:
                bed.stop()
                raise
            print(bed.kubeconfig)
        elif args.command == "run-pods":
            run_pods(Bed(trainer=args.trainer, root=args.dir.resolve()))
        else:
            _down(args.dir.resolve())
    except BedError as error:
        print(f"control-plane: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
