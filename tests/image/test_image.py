"""The trainer image: built from image/Containerfile with buildah, then checked from inside a container.

What a cluster relies on: it runs as a non-root user that OpenShift may replace with an arbitrary UID in group 0;
`salesfc` and `torchrun` are commands; the Feast feature repository is baked in where SALESFC_FEATURE_REPO says;
nothing is installed when a container starts; and the whole pipeline (`salesfc demo --size tiny`: prep, train
with torchrun and 2 processes, infer) runs in it. Fixtures (build, container, timings) are in conftest.py.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.image, pytest.mark.slow]

USER_UID = "1001"
# What OpenShift's restricted SCC gives a pod instead of the image's user: an arbitrary UID, group 0.
ARBITRARY_USER = "1000650000:0"
VENV = "/opt/salesfc/venv"
FEATURE_REPO = "/opt/salesfc/feature_repo"
HOME = "/opt/salesfc/home"
# A pip that tried to install anything would fail against this: no index, and an index URL where nothing listens.
NO_PIP_ENV = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}
# Every installed distribution and version, from the interpreter's own view (venv and, on a torch base, the base's).
LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps(sorted({(d.metadata['Name'], d.version) for d in m.distributions()})))"
)


def ok(result, what: str) -> str:
    assert result.returncode == 0, (f"{what} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
                                    f"\n--- stderr\n{result.stderr[-4000:]}")
    return result.stdout


def test_image_metadata(image_config, image_version, image_metrics, record_property):
    config = image_config
    for key in ("image_build_s", "image_size_gb", "base_build_s"):
        record_property(key, image_metrics.get(key))
    assert config["User"] == USER_UID
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["SALESFC_FEATURE_REPO"] == FEATURE_REPO
    assert env["HOME"] == HOME
    assert env["PATH"].startswith(f"{VENV}/bin:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    # Every SALESFC_* variable is one a setting reads (salesfc warns about the others).
    assert [name for name in env if name.startswith("SALESFC_")] == ["SALESFC_FEATURE_REPO"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "salesfc"
    assert labels["org.opencontainers.image.version"] == image_version
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.base.name"] == "localhost/salesfc-test-base:bookworm"
    for key in ("description", "source", "revision"):
        assert f"org.opencontainers.image.{key}" in labels
    # Whatever starts the container, nothing in the image itself installs anything first.
    startup = " ".join((config.get("Entrypoint") or []) + (config.get("Cmd") or []))
    assert "pip" not in startup and "install" not in startup
    assert config.get("Cmd") == ["salesfc", "--help"]


def test_runs_as_the_non_root_user(run_in):
    ids = ok(run_in("sh", "-c", 'echo "$(id -u) $(id -g) $HOME $(pwd)"'), "id").split()
    assert ids == [USER_UID, "0", HOME, HOME]


def test_dependencies_come_in_layers(image_layer_sizes):
    """The CUDA wheels, torch and the rest are separate layers: a pull fetches them in parallel, a new version
    reuses them, and no build step commits the whole ~6 GB venv at once (what ran a CI machine out of disk)."""
    sizes = image_layer_sizes
    total = sum(sizes)
    big = [size for size in sizes if size > 0.5e9]
    assert len(big) >= 3, f"expected the CUDA, torch and other dependencies in 3 layers over 0.5 GB, got {sizes}"
    assert max(sizes) < 0.6 * total, f"one layer holds {max(sizes) / total:.0%} of the image: {sizes}"


def test_salesfc_is_a_command(run_in, image_version):
    out = ok(run_in("salesfc", "--help"), "salesfc --help")
    for command in ("prep", "train", "infer", "check", "demo"):
        assert command in out
    assert ok(run_in("salesfc", "--version"), "salesfc --version").strip() == f"salesfc {image_version}"
    assert ok(run_in("sh", "-c", "command -v salesfc"), "command -v salesfc").strip() == f"{VENV}/bin/salesfc"


def test_torchrun_is_a_command(run_in):
    assert ok(run_in("sh", "-c", "command -v torchrun"), "command -v torchrun").strip() == f"{VENV}/bin/torchrun"
    assert "--nproc-per-node" in ok(run_in("torchrun", "--help"), "torchrun --help")


def test_feature_repo_is_baked_in(run_in):
    script = (
        "import os; "
        f"repo = os.environ['SALESFC_FEATURE_REPO']; assert repo == '{FEATURE_REPO}', repo; "
        "print(sorted(os.listdir(repo)))"
    )
    files = ok(run_in("python", "-c", script), "listing the feature repository")
    for name in ("definitions.py", "feature_store.yaml", "feature_store.postgres.yaml"):
        assert name in files


def test_arbitrary_uid_can_write_home_but_not_the_venv(run_in):
    script = (
        f'set -e; touch "$HOME/probe"; mkdir -p "$HOME/salesfc-work"; rm -rf "$HOME/probe" "$HOME/salesfc-work"; '
        f'if [ -w {VENV}/bin ] || [ -w {FEATURE_REPO} ]; then echo "venv or feature repo writable"; exit 1; fi; '
        "id -u"
    )
    for user in (None, ARBITRARY_USER):
        ok(run_in("sh", "-c", script, user=user), f"write checks as {user or 'the image user'}")


def test_demo_runs_end_to_end_without_installing_anything(run_in, image_metrics, record_property):
    """The whole pipeline, as OpenShift would run it (arbitrary UID), with pip unable to reach any index."""
    before = ok(run_in("python", "-c", LIST_DISTRIBUTIONS), "listing distributions")
    start = time.monotonic()
    result = run_in("salesfc", "demo", "--size", "tiny", "--workdir", "/tmp/w",
                    user=ARBITRARY_USER, env=NO_PIP_ENV, timeout=900)
    image_metrics["demo_s"] = round(time.monotonic() - start, 1)
    record_property("demo_s", image_metrics["demo_s"])
    out = ok(result, "salesfc demo --size tiny --workdir /tmp/w")
    assert "== done" in out
    assert "is set but no setting reads it" not in result.stdout + result.stderr
    after = ok(run_in("python", "-c", LIST_DISTRIBUTIONS), "listing distributions")
    assert json.loads(after) == json.loads(before), "the demo changed the installed packages"

    run_id = ok(run_in("cat", "/tmp/w/models/LATEST"), "reading models/LATEST").strip()
    assert run_id
    expected = [f"/tmp/w/models/{run_id}/{name}" for name in ("checkpoint.pt", "model.pt", "preprocess.json")]
    expected += [f"/tmp/w/reports/{run_id}/{name}" for name in ("report.md", "metrics.json", "predictions.parquet")]
    ok(run_in("sh", "-c", " && ".join(f"test -s {path}" for path in expected)), f"artifacts of {run_id}")


def test_spark_runs_in_the_image(run_in):
    """What the chart's featureStore.offlineStore=spark runs: pyspark's launcher on PATH for the master and workers,
    a Java runtime, and salesfc's Spark store (prep: Feast's Spark sources and materialization engine), as an
    arbitrary UID with no index reachable."""
    ok(run_in("sh", "-c", "command -v spark-class && java -version 2>&1"), "spark-class and java on PATH")
    out = ok(run_in("salesfc", "prep", "--size", "tiny", "--workdir", "/tmp/spark", "--feature-store", "spark",
                    user=ARBITRARY_USER, env=NO_PIP_ENV, timeout=900), "salesfc prep --feature-store spark")
    assert "offline store spark" in out
    # The chart's Spark master and workers start through salesfc.spark_env: the arbitrary UID gets a name.
    who = ok(run_in("python", "-m", "salesfc.spark_env", "sh", "-c", "whoami; echo $HOME", user=ARBITRARY_USER),
             "python -m salesfc.spark_env whoami")
    assert who.split() == ["salesfc", "/opt/salesfc/home"], who
    # The master as the chart starts it, stopped after 40 s (grep stops reading at its line).
    master = run_in("sh", "-c", "timeout 40 python -m salesfc.spark_env spark-class "
                    "org.apache.spark.deploy.master.Master --host 127.0.0.1 --port 7077 --webui-port 8080 2>&1 "
                    "| grep -m1 'I have been elected leader'", user=ARBITRARY_USER, timeout=120,
                    # buildah's chroot makes up a host name that nothing resolves (a pod's resolves; the chart sets
                    # SPARK_LOCAL_IP to the pod's IP anyway).
                    env={"SPARK_LOCAL_IP": "127.0.0.1"})
    assert "I have been elected leader" in master.stdout, master.stdout[-2000:] + master.stderr[-2000:]
