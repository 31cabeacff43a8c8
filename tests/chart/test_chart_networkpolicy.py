"""The network policies, evaluated on the pods the release runs (the trainer's from the runtime template): what may
talk to what. A small evaluator of NetworkPolicy semantics (same namespace, podSelector peers, ports)."""

from __future__ import annotations

import pytest

from chartlib import case_id, pod_specs, render, values_cases

pytestmark = pytest.mark.chart

OUTSIDE = {"labels": {}, "namespace": "elsewhere"}  # a pod or address outside the release
# The Trainer's controller pod, in the namespace a Kubeflow install puts it in.
CONTROLLER = {"labels": {"app.kubernetes.io/name": "trainer"}, "namespace": "kubeflow-system",
              "namespace_labels": {"kubernetes.io/metadata.name": "kubeflow-system"}}


def selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        value, op = labels.get(expr["key"]), expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and expr["key"] not in labels:
            return False
        if op == "DoesNotExist" and expr["key"] in labels:
            return False
    return True


def peer_matches(peer: dict, other: dict) -> bool:
    if "ipBlock" in peer:
        return other is OUTSIDE  # addresses stand for things outside the release
    if "namespaceSelector" not in peer and other is OUTSIDE:
        return False  # a bare podSelector means this namespace only
    if peer.get("namespaceSelector", {}) != {}:
        # Only pods that say which namespace labels they have (the controller) can match a labelled namespace.
        if not selects(peer["namespaceSelector"], other.get("namespace_labels", {})):
            return False
    return selects(peer.get("podSelector") or {}, other["labels"])


def port_matches(ports, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") == protocol and ("port" not in p or p["port"] == port):
            return True
    return False


def allowed(policies, direction: str, pod: dict, other: dict, port: int, protocol: str) -> bool:
    """Is traffic in `direction` (Ingress to `pod` from `other`, Egress from `pod` to `other`) allowed?"""
    if pod is OUTSIDE:
        return True
    relevant = [p for p in policies if direction in p["spec"].get("policyTypes", ["Ingress"])
                and selects(p["spec"]["podSelector"], pod["labels"])]
    if not relevant:
        return True  # not isolated
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in relevant:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if port_matches(rule.get("ports"), port, protocol) and (
                    not peers or any(peer_matches(peer, other) for peer in peers)):
                return True
    return False


def can_connect(policies, src: dict, dst: dict, port: int, protocol: str = "TCP") -> bool:
    return allowed(policies, "Egress", src, dst, port, protocol) and \
        allowed(policies, "Ingress", dst, src, port, protocol)


def pods_by_component(rendered) -> dict[str, dict]:
    return {meta["labels"]["app.kubernetes.io/component"]: {"labels": meta["labels"]}
            for _, meta, _ in pod_specs(rendered)}


CASES = [files for files in values_cases() if "namespaced-kaggle" not in case_id(files)]  # that one turns them off


@pytest.mark.parametrize("files", CASES, ids=case_id)
def test_network_policies(files):
    rendered = render("helm4", files)
    policies = rendered.of_kind("NetworkPolicy")
    assert policies, "network policies are on by default"
    pods = pods_by_component(rendered)
    clients = ["prep", "trainer", "infer", "test"]
    external = "postgresql" not in pods
    database = OUTSIDE if external else pods["postgresql"]
    db_port = rendered.one("Job", "prep")["spec"]["template"]["spec"]["containers"][0]["env"]
    db_port = int({e["name"]: e.get("value") for e in db_port}["SALESFC_PG_PORT"])
    problems = []

    def expect(src, dst, port, want, protocol="TCP"):
        got = can_connect(policies, pods.get(src, OUTSIDE) if isinstance(src, str) else src,
                          pods.get(dst, OUTSIDE) if isinstance(dst, str) else dst, port, protocol)
        if got != want:
            problems.append(f"{src} -> {dst}:{port}/{protocol}: {'allowed' if got else 'denied'}, expected "
                            f"{'allowed' if want else 'denied'}")

    for client in clients:
        expect(client, database, db_port, True)
        expect(client, OUTSIDE, 53, True, "UDP")  # DNS
        expect(client, OUTSIDE, 443, False)
        expect(OUTSIDE, client, 8080, False)
    expect("trainer", "trainer", 29500, True)  # rendezvous
    expect("trainer", "trainer", 41234, True)  # NCCL/gloo pick their ports
    for a in clients:
        for b in clients:
            if not (a == b == "trainer"):
                expect(a, b, 29500, False)
    # Progress to the Trainer's status server: the trainer pods, on its port, and nothing else.
    expect("trainer", CONTROLLER, 10443, True)
    expect("trainer", CONTROLLER, 8443, False)
    for client in ("prep", "infer", "test"):
        expect(client, CONTROLLER, 10443, False)
    if not external:
        expect(OUTSIDE, "postgresql", 5432, False)
        expect("postgresql", OUTSIDE, 443, False)
        expect("postgresql", "trainer", 29500, False)
    assert not problems, "\n".join(problems)


def test_policies_select_the_trainer_pods_from_the_runtime_template():
    rendered = render("helm4")
    trainer_pod = pods_by_component(rendered)["trainer"]["labels"]
    policy = [p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-trainer")][0]
    assert selects(policy["spec"]["podSelector"], trainer_pod)
    runtime_labels = rendered.runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"]["metadata"]["labels"]
    assert runtime_labels == trainer_pod


def test_evaluator_denies_when_a_policy_is_missing():
    """The evaluator itself: without the trainer policy, trainers cannot talk; without default deny, all can."""
    rendered = render("helm4")
    pods = pods_by_component(rendered)
    policies = rendered.of_kind("NetworkPolicy")
    without_trainer = [p for p in policies if not p["metadata"]["name"].endswith("-trainer")]
    assert not can_connect(without_trainer, pods["trainer"], pods["trainer"], 29500)
    assert can_connect([], pods["prep"], pods["infer"], 80)


def test_policies_can_be_turned_off():
    assert not render("helm4", (), ("networkPolicy.enabled=false",)).of_kind("NetworkPolicy")


def test_progress_egress_follows_its_value(tmp_path):
    pods = pods_by_component(render("helm4"))
    openshift_ai = tmp_path / "rhoai.yaml"
    openshift_ai.write_text("networkPolicy:\n  trainerStatusServer:\n    to:\n      - namespaceSelector:\n"
                            "          matchLabels: {kubernetes.io/metadata.name: redhat-ods-applications}\n")
    moved = {**CONTROLLER, "namespace_labels": {"kubernetes.io/metadata.name": "redhat-ods-applications"}}
    policies = render("helm4", (str(openshift_ai),)).of_kind("NetworkPolicy")
    assert can_connect(policies, pods["trainer"], moved, 10443)
    assert not can_connect(policies, pods["trainer"], CONTROLLER, 10443)
    silent = tmp_path / "none.yaml"
    silent.write_text("networkPolicy:\n  trainerStatusServer:\n    to: []\n")
    policies = render("helm4", (str(silent),)).of_kind("NetworkPolicy")
    assert not can_connect(policies, pods["trainer"], CONTROLLER, 10443)
