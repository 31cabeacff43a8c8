"""salesfc launch without a cluster: the TrainJob it takes from the chart's ConfigMap, and its errors.

What it does against a real API server and the Trainer's webhook (create after prep, keep, replace, owner, RBAC) is
tests/cluster's: the bed runs the launch hook's pod for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from salesfc import launch, settings
from salesfc.cli import build_parser
from salesfc.errors import UserError

TRAINJOB = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": "demo-salesfc-train-0a1b2c3d", "namespace": "forecasting",
                         "labels": {"app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/instance": "demo"}},
            "spec": {"runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                    "name": "demo-salesfc-forecasting-1a2b3c4d"},
                     "trainer": {"image": "quay.io/salesfc/salesfc:0.1.0", "numNodes": 1}}}


def configmap(text: str | None, name: str = "demo-salesfc-trainjob", uid: str = "5e1f-uid"):
    return SimpleNamespace(metadata=SimpleNamespace(name=name, uid=uid),
                           data=None if text is None else {launch.MANIFEST_KEY: text})


def test_the_trainjob_is_owned_by_its_configmap_and_says_who_manages_it():
    job = launch.trainjob_of(configmap(yaml.safe_dump(TRAINJOB)))
    assert job["spec"] == TRAINJOB["spec"]
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "demo-salesfc-trainjob", "uid": "5e1f-uid",
        "blockOwnerDeletion": False, "controller": False}]
    # Helm does not manage it; the release label stays (selectors and `kubectl get -l` find it).
    assert job["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "salesfc-launch",
                                         "app.kubernetes.io/instance": "demo"}
    assert launch.owned_by(job, "5e1f-uid") and not launch.owned_by(job, "another-uid")
    assert not launch.owned_by(None, "5e1f-uid")


@pytest.mark.parametrize("text, message", [
    (None, "must hold one named TrainJob"),
    ("", "must hold one named TrainJob"),
    ("kind: Job\nmetadata: {name: x}\n", "must hold one named TrainJob"),
    ("kind: TrainJob\nmetadata: {}\n", "must hold one named TrainJob"),
    ("kind: [TrainJob\n", "is not YAML"),
])
def test_a_configmap_without_one_trainjob_is_refused_naming_it(text, message):
    with pytest.raises(UserError, match=message) as err:
        launch.trainjob_of(configmap(text))
    assert "ConfigMap demo-salesfc-trainjob" in str(err.value)


def test_settings_come_from_the_environment_the_chart_sets():
    args = build_parser().parse_args(["launch"])
    values = settings.resolve(args, "launch", {"SALESFC_NAMESPACE": "forecasting",
                                               "SALESFC_TRAINJOB_CONFIGMAP": "demo-salesfc-trainjob",
                                               "SALESFC_WAIT_TIMEOUT": "120"})
    assert (values["namespace"], values["trainjob_configmap"], values["wait_timeout"]) == \
        ("forecasting", "demo-salesfc-trainjob", 120.0)
    # Nothing of the data, store or training: launch reads none of it.
    assert {s.name for s in settings.for_command("launch")} == {"namespace", "trainjob_configmap", "wait_timeout",
                                                                "log_level"}


def test_no_cluster_configuration_is_one_line_saying_what_to_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    result = subprocess.run([sys.executable, "-m", "salesfc", "launch", "--namespace", "forecasting",
                             "--trainjob-configmap", "demo-salesfc-trainjob"], capture_output=True, text=True,
                            timeout=120, env={**env, "KUBECONFIG": str(tmp_path / "none"), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("salesfc launch: error: no cluster to launch on: "), result.stderr
    assert "KUBECONFIG" in last
