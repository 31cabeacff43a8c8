"""salesfc submit's arguments, the TrainJob it builds from the Kubeflow SDK's types, and rank 0's progress reporter.

The SDK's local backend takes only a CustomTrainer (a Python function), not the CustomTrainerContainer submit uses,
so these tests build the TrainJob with the SDK's Kubernetes types and stop short of a cluster; tests/cluster sends
it to real Trainer webhooks and controllers.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import pytest

from salesfc import settings, submit, trainer_status
from salesfc.cli import build_parser
from salesfc.errors import UserError


def config(argv, environ=None) -> settings.Config:
    args = build_parser().parse_args(["submit", *argv])
    return settings.Config("submit", settings.resolve(args, "submit", environ or {}))


def runtime(kind: str):
    from kubeflow.trainer import Runtime, RuntimeKind, RuntimeTrainer, TrainerType

    trainer = RuntimeTrainer(trainer_type=TrainerType.CUSTOM_TRAINER, framework="torch",
                             image="quay.io/salesfc/salesfc:0.1.0")
    trainer.num_nodes = 1
    return Runtime(name="salesfc-trainer-0a1b2c3d", kind=RuntimeKind(kind), trainer=trainer)


def built(argv, kind="TrainingRuntime", environ=None) -> dict:
    labels = {"app.kubernetes.io/part-of": "salesfc", "app.kubernetes.io/instance": "forecasting"}
    return submit.trainjob(runtime(kind), labels, "train-1", config(argv, environ)).to_dict()


def test_wait_and_follow_are_switches_with_variables():
    assert config([]).wait is False and config([]).follow is False
    assert config(["--wait"]).wait is True
    assert config(["--wait", "false", "--follow"]).values()["wait"] is False
    assert config([], {"SALESFC_FOLLOW": "yes"}).follow is True
    with pytest.raises(settings.SettingError, match=r"SALESFC_WAIT \(environment\): 'soon' must be true or false"):
        config([], {"SALESFC_WAIT": "soon"})


@pytest.mark.parametrize("argv, fragment", [
    (["--cpu", "4 cores"], "--cpu: '4 cores' must be a Kubernetes quantity, e.g. 4, 500m, 16Gi"),
    (["--memory", "16GB"], "--memory: '16GB' must be a Kubernetes quantity"),
    (["--gpus", "-1"], "--gpus: '-1' must be a whole number of at least 0"),
    (["--num-nodes", "0"], "--num-nodes: '0' must be a whole number of at least 1"),
    (["--run-id", "Train_1"], "--run-id: 'Train_1' must be lower-case letters"),
])
def test_bad_arguments_name_the_flag_and_the_fix(argv, fragment):
    with pytest.raises(settings.SettingError) as caught:
        config(argv)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("kind", ["TrainingRuntime", "ClusterTrainingRuntime"])
def test_the_runtime_ref_names_the_runtime_kind(kind):
    assert built([], kind)["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": kind,
                                                      "name": "salesfc-trainer-0a1b2c3d"}


def test_nodes_processes_resources_and_settings_reach_the_trainer():
    job = built(["--num-nodes", "2", "--nproc-per-node", "4", "--cpu", "7500m", "--memory", "30Gi", "--gpus", "4",
                 "--epochs", "12", "--hidden", "32,16"], environ={"SALESFC_LR": "0.01"})
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    wanted = {"cpu": "7500m", "memory": "30Gi", "nvidia.com/gpu": "4"}
    assert {k: str(v) for k, v in trainer["resourcesPerNode"]["limits"].items()} == wanted
    assert {k: str(v) for k, v in trainer["resourcesPerNode"]["requests"].items()} == wanted
    assert trainer["command"] == ["torchrun"] and trainer["args"] == ["-m", "salesfc", "train"]
    env = {e["name"]: e["value"] for e in trainer["env"]}
    assert env["SALESFC_EPOCHS"] == "12" and env["SALESFC_HIDDEN"] == "32,16" and env["SALESFC_LR"] == "0.01"
    assert env["SALESFC_RUN_ID"] == "train-1" == job["metadata"]["name"]
    # The submitter's own settings stay with it; the runtime brings the store's.
    assert not {"SALESFC_NAMESPACE", "SALESFC_RUNTIME", "SALESFC_WAIT", "SALESFC_LOG_LEVEL",
                "SALESFC_NPROC_PER_NODE", "SALESFC_WORKDIR"} & set(env)
    assert job["metadata"]["labels"]["app.kubernetes.io/instance"] == "forecasting"


def test_unset_counts_and_resources_are_left_to_the_runtime_and_the_trainer():
    trainer = built([])["spec"]["trainer"]
    assert trainer["image"] == "quay.io/salesfc/salesfc:0.1.0"
    assert not {"numNodes", "numProcPerNode", "resourcesPerNode"} & set(trainer)
    assert built(["--image", "registry.example/salesfc:dev"])["spec"]["trainer"]["image"] == \
        "registry.example/salesfc:dev"


def test_a_name_too_long_for_the_jobset_is_refused_before_the_cluster_is_asked():
    with pytest.raises(UserError, match="at most 47 characters"):
        submit.run(config(["--runtime", "r", "--run-id", "t" * 48]))


def test_no_cluster_configuration_is_one_line_saying_what_to_set(tmp_path):
    result = subprocess.run([sys.executable, "-m", "salesfc", "submit", "--runtime", "salesfc-trainer"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KUBECONFIG": str(tmp_path / "none"), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("salesfc submit: error: no cluster to submit to: ")
    assert "point KUBECONFIG at the cluster's kubeconfig" in result.stderr


RECORD = {"epoch": 2, "train_loss": 0.01, "val_loss": 0.02, "val_wmae": 1650.0}


def reports(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


def test_without_a_status_server_rank_0_says_so_once_in_a_trainjob_and_nothing_elsewhere(monkeypatch, caplog):
    monkeypatch.delenv(trainer_status.SERVER_URL_ENV, raising=False)
    caplog.set_level(logging.INFO, logger="salesfc")
    monkeypatch.delenv("PET_NNODES", raising=False)
    local = trainer_status.Reporter(True, epochs=4)
    assert not local.epoch_done(RECORD, 2) and not local.finished(RECORD, 2)
    assert reports(caplog, "not reported") == 0

    monkeypatch.setenv("PET_NNODES", "2")
    reporter = trainer_status.Reporter(True, epochs=4)
    for _ in range(3):
        assert not reporter.epoch_done(RECORD, 2)
    assert not reporter.finished(RECORD, 2)
    assert reports(caplog, "progress is not reported on the TrainJob's status") == 1


def test_a_status_server_that_does_not_answer_is_one_warning_and_training_goes_on(monkeypatch, caplog, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens on it once the socket is closed
    (tmp_path / "token").write_text("a-token")
    monkeypatch.setenv(trainer_status.SERVER_URL_ENV, f"https://127.0.0.1:{closed}/apis/trainer.kubeflow.org/"
                                                      f"v1alpha1/namespaces/ns/trainjobs/t/status")
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_TOKEN", str(tmp_path / "token"))
    caplog.set_level(logging.INFO)
    assert trainer_status.Reporter(False, epochs=4).update is None  # only rank 0 reports
    reporter = trainer_status.Reporter(True, epochs=4)
    assert not reporter.epoch_done(RECORD, 2)
    assert not reporter.epoch_done(RECORD, 2)  # not sent, so not throttled: tried again
    assert reports(caplog, "did not take the progress update") == 1
    assert reports(caplog, "Failed to send status update") == 2  # the SDK's own, once per try
