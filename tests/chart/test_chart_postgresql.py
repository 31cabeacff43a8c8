"""The in-cluster PostgreSQL: shared memory, a fast stop, a headless governing Service."""

from __future__ import annotations

import pytest

from chartlib import HELMS, render

pytestmark = pytest.mark.chart


@pytest.mark.parametrize("helm", HELMS)
def test_statefulset_has_shared_memory_a_fast_stop_and_a_headless_service(helm):
    rendered = render(helm, (), ("postgresql.shmSize=2Gi", "postgresql.terminationGracePeriodSeconds=90"))
    sts = rendered.one("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert "pg_ctl stop" in stop and "-m fast" in stop and "-t 85" in stop
    assert pod["terminationGracePeriodSeconds"] == 90
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}
    governing = services[sts["spec"]["serviceName"]]
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    clients = [s for s in services.values() if s["spec"].get("clusterIP") != "None"]
    assert len(clients) == 1, "clients keep one ClusterIP Service"


def test_external_database_renders_no_server():
    rendered = render("helm4", (), ("postgresql.external.enabled=true", "postgresql.external.host=db",
                                    "postgresql.external.existingSecret=db"))
    assert not rendered.of_kind("StatefulSet") and not rendered.of_kind("Service")
