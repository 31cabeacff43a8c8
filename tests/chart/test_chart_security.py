"""Security by default: the restricted Pod Security Standard on every pod the release runs, requests and limits on
every container, no password anywhere but in the generated Secret, pinned images, no service-account tokens."""

from __future__ import annotations

import base64
import re

import pytest
import yaml

from chartlib import (CHART, HELMS, REPO, case_id, containers, labels, pod_specs, render, serving_enabled,
                      spark_cluster, values_cases)

pytestmark = pytest.mark.chart

# The volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}


def restricted_violations(spec: dict) -> list[str]:
    """The checks of https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline + restricted)."""
    found = []
    pod_sc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"{field} is true")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']} is of type {sorted(kinds)}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl['name']}")
    if pod_sc.get("runAsUser") == 0:
        found.append("pod runAsUser is 0")
    if (pod_sc.get("seLinuxOptions") or {}).get("type") not in (None, "", "container_t", "container_init_t",
                                                                "container_kvm_t", "container_engine_t"):
        found.append("pod seLinuxOptions.type")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        found.append(f"pod seccompProfile {pod_seccomp}")
    for c in containers(spec):
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"{name}: capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities {caps['add']}")
        if not (sc.get("runAsNonRoot") is True or (pod_sc.get("runAsNonRoot") is True
                                                   and sc.get("runAsNonRoot") is not False)):
            found.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile is {seccomp}")
        if sc.get("procMount") not in (None, "Default"):
            found.append(f"{name}: procMount")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"{name}: hostPort")
    return found


def expected_components(files) -> set[str]:
    rendered = render("helm4", files)
    external = not rendered.of_kind("StatefulSet")
    return set(("prep", "launch", "trainer", "infer", "test") + (() if external else ("postgresql",)) +
               (("serve",) if serving_enabled(files) else ()) +
               (("spark-master", "spark-worker") if spark_cluster(files) else ()))


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_every_pod_is_found(files):
    """The checks below see every pod: prep, trainer (runtime template), infer, test and PostgreSQL."""
    components = {labels({"metadata": meta}).get("app.kubernetes.io/component")
                  for _, meta, _ in pod_specs(render("helm4", files))}
    assert components == expected_components(files)


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_restricted_pod_security_standard(helm, files):
    problems = [f"{where}: {p}" for where, _, spec in pod_specs(render(helm, files))
                for p in restricted_violations(spec)]
    assert not problems, "\n".join(problems)


def test_restricted_check_catches_violations():
    """The checker itself: each weakening is reported."""
    good = render("helm4").infer_job()["spec"]["template"]["spec"]
    assert restricted_violations(good) == []
    for change, expected in [
        (lambda s: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilege"),
        (lambda s: s["containers"][0]["securityContext"]["capabilities"].update(drop=[]), "drop lacks ALL"),
        (lambda s: (s["securityContext"].update(runAsNonRoot=False),
                    s["containers"][0]["securityContext"].pop("runAsNonRoot")), "runAsNonRoot"),
        (lambda s: (s["securityContext"].pop("seccompProfile"),
                    s["containers"][0]["securityContext"].pop("seccompProfile")), "seccompProfile"),
        (lambda s: s["containers"][0]["securityContext"].update(runAsUser=0), "runAsUser is 0"),
        (lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        (lambda s: s.update(hostNetwork=True), "hostNetwork"),
    ]:
        spec = yaml.safe_load(yaml.safe_dump(good))
        change(spec)
        assert any(expected in p for p in restricted_violations(spec)), expected


OPENSHIFT_CASES = [files for files in values_cases() if "openshift" in case_id(files)]


def test_openshift_cases_exist():
    assert len(OPENSHIFT_CASES) >= 3, OPENSHIFT_CASES


@pytest.mark.parametrize("files", OPENSHIFT_CASES, ids=case_id)
def test_openshift_profiles_set_no_fixed_ids(files):
    for where, _, spec in pod_specs(render("helm4", files)):
        for field in ("runAsUser", "runAsGroup", "fsGroup"):
            assert field not in (spec.get("securityContext") or {}), f"{where}: pod {field} is set"
        for c in containers(spec):
            for field in ("runAsUser", "runAsGroup"):
                assert field not in (c.get("securityContext") or {}), f"{where}/{c['name']}: {field} is set"


def test_default_profile_runs_as_the_image_user():
    for where, meta, spec in pod_specs(render("helm4")):
        component = meta["labels"]["app.kubernetes.io/component"]
        expected = 999 if component == "postgresql" else 1001
        assert spec["securityContext"]["runAsUser"] == expected, where


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_every_container_has_requests_and_limits(files):
    rendered = render("helm4", files)
    problems = []
    for where, _, spec in pod_specs(rendered):
        for c in containers(spec):
            resources = c.get("resources") or {}
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(part) or {}):
                        problems.append(f"{where}/{c['name']}: no {part}.{resource}")
    trainer = rendered.trainjob["spec"]["trainer"]["resourcesPerNode"]
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in trainer.get(part, {}):
                problems.append(f"TrainJob resourcesPerNode: no {part}.{resource}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_gpus_are_requested_as_the_profile_says(files):
    rendered = render("helm4", files)
    trainer = rendered.trainjob["spec"]["trainer"]
    gpus = trainer["resourcesPerNode"]["limits"].get("nvidia.com/gpu", 0)
    assert trainer["resourcesPerNode"]["requests"].get("nvidia.com/gpu", 0) == gpus
    device = {e["name"]: e.get("value") for e in trainer["env"]}["SALESFC_DEVICE"]
    if gpus:
        assert isinstance(gpus, int) and trainer["numProcPerNode"] == gpus, "one process per GPU"
        assert device in ("cuda", "auto")
    else:
        assert device in ("cpu", "auto")
    if case_id(files) in ("gpu4", "gpu4-openshift-values", "gpu4+openshift"):
        assert (trainer["numNodes"], trainer["numProcPerNode"], gpus, device) == (1, 4, 4, "cuda")


def secret_passwords(rendered) -> list[str]:
    return [base64.b64decode(v).decode() for s in rendered.of_kind("Secret") for v in (s.get("data") or {}).values()]


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_no_password_literal_in_rendered_output(helm, files):
    rendered = render(helm, files)
    problems = []

    def walk(node, path):
        if isinstance(node, dict):
            if str(node.get("name", "")).upper().endswith("PASSWORD") and "value" in node:
                problems.append(f"{path}: env {node['name']} has a literal value")
            for key, value in node.items():
                if "password" in key.lower() and isinstance(value, str) and path.count("Secret/") == 0:
                    problems.append(f"{path}.{key}: literal {value!r}")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    for obj in rendered.objects:
        walk(obj, f"{obj['kind']}/{obj['metadata']['name']}")
    # The feature store config names the password only as the placeholder Feast fills from the environment.
    for cm in rendered.of_kind("ConfigMap"):
        for text in cm["data"].values():
            for line in text.splitlines():
                if "password" in line.lower() and not line.lstrip().startswith("#"):
                    assert line.split(":", 1)[1].strip() == "'${SALESFC_PG_PASSWORD}'", line
    # A generated password: long, random, and nowhere else in the output.
    for password in secret_passwords(rendered):
        assert re.fullmatch(r"[A-Za-z0-9]{32}", password), "the generated password is not 32 random characters"
        assert rendered.text.count(base64.b64encode(password.encode()).decode()) == 1
        assert password not in rendered.text
    assert not problems, "\n".join(problems)


def test_generated_password_differs_per_render_and_is_not_in_the_chart():
    first = secret_passwords(render("helm4", (), ("logLevel=INFO",)))
    second = secret_passwords(render("helm4", (), ("logLevel=DEBUG",)))
    assert len(first) == 1 and len(second) == 1 and first != second
    for path in [*CHART.rglob("*"), *(REPO / "values").glob("*.yaml")]:
        if path.is_file():
            text = path.read_text()
            assert first[0] not in text
            for known in ("feast123", "changeme", "postgres123"):
                assert known not in text, f"{path} contains {known}"


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_no_service_account_token_is_mounted_but_the_launch_hooks(files):
    """Only the launch hook calls the API server: its pod alone mounts a token, of its own ServiceAccount (which the
    launch Role binds), never the one the other pods share."""
    rendered = render("helm4", files)
    launch_account = rendered.one("ServiceAccount", "launch")["metadata"]["name"]
    for where, meta, spec in pod_specs(rendered):
        if labels({"metadata": meta}).get("app.kubernetes.io/component") == "launch":
            assert spec.get("automountServiceAccountToken") is True, where
            assert spec["serviceAccountName"] == launch_account, where
        else:
            assert spec.get("automountServiceAccountToken") is False, where
            assert spec.get("serviceAccountName") != launch_account, where
    for sa in rendered.of_kind("ServiceAccount"):
        assert sa.get("automountServiceAccountToken") is False


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_images_are_pinned(files, chart_meta):
    rendered = render("helm4", files)
    images = [c["image"] for _, _, spec in pod_specs(rendered) for c in containers(spec)]
    images.append(rendered.trainjob["spec"]["trainer"]["image"])
    for image in images:
        name, _, tag = image.split("@")[0].rpartition(":")
        assert name and tag and tag != "latest", f"{image} is not pinned"
    salesfc = {i for i in images if "postgres" not in i}
    assert len(salesfc) == 1, f"one salesfc image expected, found {salesfc}"
    (image,) = salesfc
    assert image.split("@")[0].endswith(":" + chart_meta["appVersion"]), image
