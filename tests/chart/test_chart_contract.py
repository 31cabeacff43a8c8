"""The chart against the salesfc CLI contract (image/src/salesfc/settings.py) and against Feast: every command is a
real subcommand, every SALESFC_* variable is a setting that command reads, every value parses, and the rendered
feature_store.yaml loads in Feast with the expected stores."""

from __future__ import annotations

import pytest
import yaml

from chartlib import REPO, case_id, containers, pod_specs, render, serving_enabled, values_cases
from salesfc import cli, settings

pytestmark = pytest.mark.chart

TORCHRUN = ["torchrun", "-m", "salesfc", "train"]
SPARK_NODE = ["python", "-m", "salesfc.spark_env", "spark-class"]
# launch only creates the TrainJob through the Kubernetes API: it reads no data, store or volume.
NO_DATA = {"launch"}
STORE_ENV = {"SALESFC_WORKDIR", "SALESFC_FEATURE_STORE", "SALESFC_PG_HOST", "SALESFC_PG_PORT", "SALESFC_PG_DATABASE",
             "SALESFC_PG_USER", "SALESFC_PG_SSLMODE", "SALESFC_PG_PASSWORD"}


def salesfc_runs(rendered) -> list[tuple[str, str, list[dict], dict]]:
    """(where, subcommand, env, container) of everything that runs salesfc. The trainer's container gets its command
    and training env from the TrainJob and the store's env from the runtime: both are joined, as the Trainer does."""
    runs = []
    trainjob = rendered.trainjob["spec"]["trainer"]
    for where, _, spec in pod_specs(rendered):
        for c in containers(spec):
            # PostgreSQL's own image; Spark's master and workers (the salesfc image, running pyspark's launcher).
            if "postgres" in c["image"] or (c.get("command") or [])[:4] == SPARK_NODE:
                continue
            command = list(c.get("command") or []) + list(c.get("args") or [])
            env = list(c.get("env") or [])
            if where.split("/")[0] in ("ClusterTrainingRuntime", "TrainingRuntime"):
                assert not command, f"{where}: the runtime's container must leave the command to the TrainJob"
                command = list(trainjob["command"]) + list(trainjob.get("args") or [])
                env = env + list(trainjob["env"])
            runs.append((f"{where}/{c['name']}", command, env, c))
    return runs


def feature_store_configmap(rendered) -> dict:
    return next(c for c in rendered.of_kind("ConfigMap") if "feature_store.yaml" in c["data"])


def subcommand(command: list[str]) -> str:
    if command == TORCHRUN:
        return "train"
    assert len(command) == 2 and command[0] == "salesfc", f"{command} is not `salesfc <subcommand>`"
    return command[1]


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_commands_are_real_subcommands(files):
    runs = salesfc_runs(render("helm4", files))
    seen = sorted(subcommand(cmd) for _, cmd, _, _ in runs)
    assert seen == sorted(["check", "infer", "launch", "prep", "train"] + (["serve"] if serving_enabled(files) else [])), seen
    for where, cmd, _, _ in runs:
        assert subcommand(cmd) in cli.COMMANDS, f"{where}: {cmd}"
    assert render("helm4", files).trainjob["spec"]["trainer"]["command"] == ["torchrun"]


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_every_salesfc_variable_is_a_setting(files):
    rendered = render("helm4", files)

    def names(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "name" and isinstance(value, str) and value.startswith("SALESFC_"):
                    yield value
                yield from names(value)
        elif isinstance(node, list):
            for value in node:
                yield from names(value)

    found = {name for obj in rendered.objects for name in names(obj)}
    assert found, "no SALESFC_* variable found"
    unknown = sorted(found - settings.ENV_NAMES)
    assert not unknown, f"not in salesfc.settings.ENV_NAMES: {unknown}"


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_each_command_gets_only_its_settings_and_they_parse(files):
    problems = []
    for where, command, env, _ in salesfc_runs(render("helm4", files)):
        sub = subcommand(command)
        accepted = {s.env: s for s in settings.for_command(sub)}
        names = [e["name"] for e in env]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"{where}: duplicate env {duplicates} (Helm 4's server-side apply rejects them)")
        for item in env:
            name = item["name"]
            if name == "OMP_NUM_THREADS":
                # Read by OpenMP and torch, not a salesfc setting: the container's own CPU limit, never a literal.
                field = item.get("valueFrom", {}).get("resourceFieldRef", {})
                if field.get("resource") != "limits.cpu":
                    problems.append(f"{where}: OMP_NUM_THREADS must come from the container's limits.cpu")
            elif name == "PGSSLROOTCERT":
                # libpq's own: the CA that verifies the server (mounted from postgresql.external.caSecret or the
                # in-cluster server's postgresql.tls.existingSecret) or "system".
                if item.get("value") not in ("/etc/salesfc-db-ca/ca.crt", "system"):
                    problems.append(f"{where}: PGSSLROOTCERT is {item.get('value')!r}")
            elif not name.startswith("SALESFC_"):
                problems.append(f"{where}: {name} is set (only SALESFC_* settings, OMP_NUM_THREADS and PGSSLROOTCERT belong here)")
            elif name == "SALESFC_SPARK_DRIVER_HOST":
                # The address the Spark executors call the driver back on: the pod's own, known only at run time.
                if item.get("valueFrom") != {"fieldRef": {"fieldPath": "status.podIP"}}:
                    problems.append(f"{where}: {name} must be the pod's IP (fieldRef status.podIP)")
            elif name == settings.PASSWORD_ENV:
                if set(item) != {"name", "valueFrom"} or "secretKeyRef" not in item["valueFrom"]:
                    problems.append(f"{where}: {name} must come from a secretKeyRef")
            elif name not in accepted:
                problems.append(f"{where}: salesfc {sub} reads no {name}")
            elif "value" not in item:
                problems.append(f"{where}: {name} has no literal value")
            else:
                try:
                    accepted[name].parse(item["value"], name)
                except settings.SettingError as err:
                    problems.append(f"{where}: {err}")
        missing = STORE_ENV - set(names) if sub not in NO_DATA else set()
        if missing:
            problems.append(f"{where}: missing {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_checker_catches_a_setting_of_another_command(monkeypatch):
    """The contract check itself: prep must not get a training setting, and a bad value must not parse."""
    accepted = {s.env for s in settings.for_command("prep")}
    assert "SALESFC_EPOCHS" not in accepted
    with pytest.raises(settings.SettingError):
        settings.BY_NAME["epochs"].parse("1e+06", "SALESFC_EPOCHS")


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_every_salesfc_pod_mounts_the_shared_volume_and_the_store_config(files):
    rendered = render("helm4", files)
    config_map = feature_store_configmap(rendered)["metadata"]["name"]
    for where, command, env, container in salesfc_runs(rendered):
        if subcommand(command) in NO_DATA:
            assert not container.get("volumeMounts"), f"{where} reads no data: it mounts nothing"
            continue
        values = {e["name"]: e.get("value") for e in env}
        assert values["SALESFC_WORKDIR"] == "/shared", where
        assert values["SALESFC_FEATURE_STORE"] == "/etc/salesfc/feature_store.yaml", where
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "/shared" in mounts and "/etc/salesfc" in mounts, where
    for where, _, spec in pod_specs(rendered):
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        if where.startswith("StatefulSet/") or where.endswith("-launch") or "-spark-" in where:
            continue
        assert volumes["feature-store"]["configMap"]["name"] == config_map, where
        assert volumes["feature-store"]["configMap"]["items"] == [{"key": "feature_store.yaml",
                                                                   "path": "feature_store.yaml"}]
        assert "persistentVolumeClaim" in volumes["shared"], where


@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_inference_and_check_use_this_trainjobs_model(files):
    rendered = render("helm4", files)
    name = rendered.trainjob["metadata"]["name"]
    run_ids = {}
    for where, command, env, _ in salesfc_runs(rendered):
        values = {e["name"]: e.get("value") for e in env}
        run_ids[subcommand(command)] = values.get("SALESFC_RUN_ID")
    # The service follows models/LATEST instead: a retrain is swapped in by the running pods.
    assert run_ids == {"prep": None, "launch": None, "train": name, "infer": name, "check": name,
                       **({"serve": None} if serving_enabled(files) else {})}


def test_prep_settings_follow_values():
    rendered = render("helm4", ("charts/salesfc/ci/namespaced-kaggle-values.yaml",))
    prep = rendered.one("Job", "prep")
    container = prep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SALESFC_SOURCE"] == "kaggle"
    assert env["SALESFC_KAGGLE_DIR"] == "/kaggle/walmart/2014"
    kaggle = [m for m in container["volumeMounts"] if m["mountPath"] == "/kaggle"]
    assert kaggle == [{"name": "kaggle", "mountPath": "/kaggle", "readOnly": True}]
    claim = [v for v in prep["spec"]["template"]["spec"]["volumes"] if v["name"] == "kaggle"][0]
    assert claim["persistentVolumeClaim"] == {"claimName": "walmart-csv", "readOnly": True}
    default = render("helm4").one("Job", "prep")["spec"]["template"]["spec"]["containers"][0]
    default_env = {e["name"]: e.get("value") for e in default["env"]}
    assert default_env["SALESFC_SOURCE"] == "synthetic" and "SALESFC_KAGGLE_DIR" not in default_env
    on_shared = render("helm4", (), ("data.source=kaggle",)).one("Job", "prep")
    shared_env = {e["name"]: e.get("value") for e in on_shared["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert shared_env["SALESFC_KAGGLE_DIR"] == "/shared/kaggle"


def test_prep_is_a_post_install_hook_that_keeps_its_logs():
    prep = render("helm4").one("Job", "prep")
    annotations = prep["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade,post-rollback"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    test_pod = render("helm4").one("Pod", "test")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"


# --- Feast -------------------------------------------------------------------------------------------------------

PG_ENV = {"SALESFC_PG_HOST": "db.test", "SALESFC_PG_PORT": "6543", "SALESFC_PG_DATABASE": "forecasts",
          "SALESFC_PG_USER": "forecaster", "SALESFC_PG_SSLMODE": "verify-full", "SALESFC_PG_PASSWORD": "s3cret"}


def rendered_feature_store(offline: str) -> str:
    rendered = render("helm4", (), (f"featureStore.offlineStore={offline}",))
    return feature_store_configmap(rendered)["data"]["feature_store.yaml"]


@pytest.mark.parametrize("offline", ["duckdb", "postgres"])
def test_feature_store_yaml_loads_in_feast(offline, tmp_path, monkeypatch):
    from feast.repo_config import load_repo_config

    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "feature_store.yaml"
    path.write_text(rendered_feature_store(offline))
    config = load_repo_config(tmp_path, path)
    assert config.project == "salesfc"
    assert config.registry.registry_type == "sql"
    assert config.registry.path == "postgresql+psycopg://db.test:6543/forecasts"
    connect = config.registry.sqlalchemy_config_kwargs["connect_args"]
    assert connect == {"user": "forecaster", "password": "s3cret", "sslmode": "verify-full"}
    assert config.online_store.type == "postgres"
    assert (config.online_store.host, int(config.online_store.port), config.online_store.database,
            config.online_store.user, config.online_store.password, config.online_store.sslmode) == \
        ("db.test", 6543, "forecasts", "forecaster", "s3cret", "verify-full")
    assert config.offline_store.type == offline
    if offline == "postgres":
        assert config.offline_store.host == "db.test" and config.offline_store.password == "s3cret"
        assert getattr(config.offline_store.entity_select_mode, "value", None) == "embed_query"
    assert config.materialization_config.pull_latest_features is True
    assert config.entity_key_serialization_version == 3


@pytest.mark.parametrize("offline", ["duckdb", "postgres"])
def test_feature_store_yaml_mirrors_the_feature_repo(offline):
    """The ConfigMap is feature_repo/feature_store.postgres.yaml, with only the offline store chosen by values."""
    repo = yaml.safe_load((REPO / "feature_repo" / "feature_store.postgres.yaml").read_text())
    chart = yaml.safe_load(rendered_feature_store(offline))
    if offline == "duckdb":
        assert chart.pop("offline_store") == {"type": "duckdb"}
        repo.pop("offline_store")
    assert chart == repo
