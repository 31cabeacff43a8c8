"""The forecast service in the chart (serving.enabled): in every values profile, a Deployment that passes restricted
Pod Security and the Kubernetes schemas, probes on the service's own endpoints, only `salesfc serve`'s settings, a
Service, a budget and an autoscaler when asked for, and network policies that admit the chosen clients only."""

from __future__ import annotations

import pytest
import yaml
from test_chart_networkpolicy import OUTSIDE, can_connect, pods_by_component
from test_chart_security import restricted_violations

from chartlib import HELMS, case_id, containers, pod_specs, render, run, helm_template_args, values_cases
from k8sschemas import K8S_VERSIONS, PROMETHEUS_OPERATOR, cel_errors, crd_errors, crd_schema, k8s_errors
from salesfc import settings

pytestmark = pytest.mark.chart

ON = ("serving.enabled=true",)
SERVE_KINDS = ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler")


def serve_objects(rendered) -> list[dict]:
    return [o for o in rendered.objects if o["kind"] in SERVE_KINDS and
            o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "serve"]


def test_off_by_default():
    assert not serve_objects(render("helm4"))
    assert not [p for p in render("helm4").of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-serve")]


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_deployment_in_every_profile(files):
    rendered = render("helm4", files, ON)
    deployment = rendered.one("Deployment", "serve")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    problems = restricted_violations(pod["spec"])
    assert not problems, "\n".join(problems)
    (container,) = containers(pod["spec"])
    assert container["command"] == ["salesfc", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    accepted = {s.env: s for s in settings.for_command("serve")}
    env = {e["name"]: e for e in container["env"]}
    assert len(env) == len(container["env"]), "duplicate env names"
    for name, item in env.items():
        if name in ("OMP_NUM_THREADS", "PGSSLROOTCERT", settings.PASSWORD_ENV):
            continue
        assert name in accepted, f"salesfc serve reads no {name}"
        if name == "SALESFC_SPARK_DRIVER_HOST":  # the pod's IP (the contract test checks the fieldRef)
            continue
        accepted[name].parse(item["value"], name)
    assert env["SALESFC_HOST"]["value"] == "0.0.0.0"
    assert "SALESFC_RUN_ID" not in env, "the service follows models/LATEST: a retrain is swapped in, not rolled out"
    port = int(env["SALESFC_PORT"]["value"])
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    service = rendered.one("Service", "serve")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # The same volumes and store configuration as every other salesfc pod.
    infer = rendered.infer_job()["spec"]["template"]["spec"]
    assert {v["name"] for v in infer["volumes"]} <= {v["name"] for v in pod["spec"]["volumes"]}


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_serving_objects_match_kubernetes_schemas(k8s):
    rendered = render("helm4", (), ON + ("serving.autoscaling.enabled=true",
                                          'json:serving.clients=[{"namespaceSelector": {"matchLabels": '
                                          '{"kubernetes.io/metadata.name": "shop"}}}]'))
    objects = serve_objects(rendered) + rendered.of_kind("NetworkPolicy")
    assert {o["kind"] for o in objects} == {*SERVE_KINDS, "NetworkPolicy"}
    errors = [f"{o['kind']}/{o['metadata']['name']}: {e}" for o in objects for e in k8s_errors(o, k8s)]
    assert not errors, "\n".join(errors)


def test_budget_only_with_more_than_one_pod_and_the_autoscaler_owns_replicas():
    assert not render("helm4", (), ON).of_kind("PodDisruptionBudget")
    two = render("helm4", (), ON + ("serving.replicas=2",))
    assert two.one("PodDisruptionBudget", "serve")["spec"]["minAvailable"] == 1
    assert two.one("Deployment", "serve")["spec"]["replicas"] == 2
    assert not two.of_kind("HorizontalPodAutoscaler")
    scaled = render("helm4", (), ON + ("serving.autoscaling.enabled=true",))
    hpa = scaled.one("HorizontalPodAutoscaler", "serve")
    assert hpa["spec"]["scaleTargetRef"]["name"] == scaled.one("Deployment", "serve")["metadata"]["name"]
    assert "replicas" not in scaled.one("Deployment", "serve")["spec"]
    assert scaled.of_kind("PodDisruptionBudget")
    refused = run(helm_template_args("helm4", (), ON + ("serving.replicas=2", "serving.pdb.minAvailable=2")))
    assert refused.returncode != 0 and "serving.pdb.minAvailable (2) must be less than" in refused.stderr


@pytest.mark.parametrize("files", [f for f in values_cases() if "namespaced-kaggle" not in case_id(f)], ids=case_id)
def test_network_policies_admit_the_chosen_clients_only(files):
    client = {"labels": {"app": "pricing"}}
    other = {"labels": {"app": "other"}}
    rendered = render("helm4", files, ON + ('json:serving.clients=[{"podSelector": {"matchLabels": '
                                            '{"app": "pricing"}}}]',))
    policies = rendered.of_kind("NetworkPolicy")
    pods = pods_by_component(rendered)
    port = int({e["name"]: e.get("value") for e in rendered.one("Deployment", "serve")["spec"]["template"]["spec"][
        "containers"][0]["env"]}["SALESFC_PORT"])
    serve = pods["serve"]
    assert can_connect(policies, client, serve, port)
    assert can_connect(policies, pods["test"], serve, port)  # helm test
    assert not can_connect(policies, other, serve, port)
    assert not can_connect(policies, OUTSIDE, serve, port)
    assert not can_connect(policies, client, serve, 5432)
    assert not can_connect(policies, serve, OUTSIDE, 443)
    database = pods.get("postgresql", OUTSIDE)
    db_port = 5432 if "postgresql" in pods else int(
        {e["name"]: e.get("value") for e in rendered.one("Job", "prep")["spec"]["template"]["spec"]["containers"][0][
            "env"]}["SALESFC_PG_PORT"])
    assert can_connect(policies, serve, database, db_port)
    for component in ("prep", "trainer", "infer"):
        assert not can_connect(policies, pods[component], serve, port)
    # Without named clients, no one but the test pod.
    bare = render("helm4", files, ON)
    assert not can_connect(bare.of_kind("NetworkPolicy"), client, pods_by_component(bare)["serve"], port)


def test_every_pod_of_the_service_is_seen_by_the_shared_checks():
    components = {meta["labels"]["app.kubernetes.io/component"] for _, meta, _ in pod_specs(render("helm4", (), ON))}
    assert "serve" in components


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_helm_test_asks_the_service_for_a_forecast_through_its_service(files):
    """`salesfc check` in the test pod gets the Service's URL (serve_url) only with serving.enabled, and every
    policy on its way lets it through: the serve pods' ingress and the test pod's own egress."""
    def check_env(rendered) -> dict:
        (container,) = containers(rendered.one("Pod", "test")["spec"])
        assert container["command"] == ["salesfc", "check"]
        return {e["name"]: e.get("value") for e in container["env"]}

    assert "SALESFC_SERVE_URL" not in check_env(render("helm4", files, ("serving.enabled=false",)))
    for sets in (ON, ON + ("serving.port=9090",)):
        rendered = render("helm4", files, sets)
        url = check_env(rendered).get("SALESFC_SERVE_URL")
        assert url, f"{sets}: helm test does not call the service"
        settings.BY_NAME["serve_url"].parse(url, "SALESFC_SERVE_URL")
        service = rendered.one("Service", "serve")
        port = service["spec"]["ports"][0]["port"]
        assert url == f"http://{service['metadata']['name']}:{port}", url
        policies = rendered.of_kind("NetworkPolicy")
        if policies:  # namespaced-kaggle turns them off
            pods = pods_by_component(rendered)
            assert can_connect(policies, pods["test"], pods["serve"], port), f"{sets}: a policy blocks helm test"


SERVICE_MONITOR_API = ("monitoring.coreos.com/v1/ServiceMonitor",)
MONITORED = ON + ("serving.serviceMonitor.enabled=true",)
PROMETHEUS = {"labels": {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}}


@pytest.mark.parametrize("helm", HELMS)
def test_service_monitor_only_when_asked_for_and_the_cluster_has_its_api(helm):
    assert not render(helm, (), ON, api_versions=SERVICE_MONITOR_API).of_kind("ServiceMonitor")
    assert not render(helm, (), ("serving.serviceMonitor.enabled=true",), api_versions=SERVICE_MONITOR_API
                      ).of_kind("ServiceMonitor"), "a ServiceMonitor of a service that is not there"
    rendered = render(helm, (), MONITORED + ("serving.serviceMonitor.labels.release=kube-prometheus-stack",
                                              "serving.serviceMonitor.interval=15s"), api_versions=SERVICE_MONITOR_API)
    monitor = rendered.one("ServiceMonitor", "serve")
    service = rendered.one("Service", "serve")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("15s", "10s")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    errors = crd_errors(monitor, "servicemonitors", PROMETHEUS_OPERATOR)
    failed, _ = cel_errors(monitor, crd_schema("monitoring.coreos.com", "v1", "servicemonitors", PROMETHEUS_OPERATOR))
    assert not errors + failed, "\n".join(errors + failed)


@pytest.mark.parametrize("helm", HELMS)
def test_service_monitor_without_its_api_is_refused_saying_what_to_do(helm):
    refused = run(helm_template_args(helm, (), MONITORED))
    assert refused.returncode != 0
    for words in ("serving.serviceMonitor.enabled is true", "no monitoring.coreos.com/v1 ServiceMonitor API",
                  "install the Prometheus Operator", "set serving.serviceMonitor.enabled=false"):
        assert words in refused.stderr, refused.stderr


@pytest.mark.parametrize("value", ["30", "half a minute", "1.5s"])
def test_service_monitor_durations_are_checked_by_the_schema(value, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"serving": {"serviceMonitor": {"interval": value}}}))
    refused = run([*helm_template_args("helm4"), "--values", values])
    assert refused.returncode != 0 and "serving/serviceMonitor/interval" in refused.stderr, refused.stderr


def test_prometheus_may_scrape_only_while_the_service_monitor_is_on():
    def policies_and_serve(sets):
        rendered = render("helm4", (), sets, api_versions=SERVICE_MONITOR_API)
        return rendered.of_kind("NetworkPolicy"), pods_by_component(rendered)["serve"]
    port = 8000
    policies, serve = policies_and_serve(MONITORED)
    assert can_connect(policies, PROMETHEUS, serve, port)
    assert not can_connect(policies, {"labels": {"app.kubernetes.io/name": "grafana"}}, serve, port)
    assert not can_connect(policies, OUTSIDE, serve, port)
    policies, serve = policies_and_serve(ON)
    assert not can_connect(policies, PROMETHEUS, serve, port)
