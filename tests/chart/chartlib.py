"""Helpers of the chart tests: the tools scripts/install-chart-tools.sh installs, and rendered manifests, cached.

Every values file of the repository (values/*.yaml) and of chart-testing (charts/salesfc/ci/*-values.yaml) is
rendered once per Helm version and reused by every test that reads manifests.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "salesfc"
TOOLS = Path(os.environ.get("TOOLS_DIR", REPO / ".tools")).resolve()
BIN = TOOLS / "bin"
SHARE = TOOLS / "share"
INSTALL_HINT = "run scripts/install-chart-tools.sh (it installs into ${TOOLS_DIR:-.tools})"

HELMS = ("helm3", "helm4")
TRAINER_VERSIONS = ("v2.1.0", "v2.3.0")
RELEASE = "demo"
NAMESPACE = "forecasting"

PROFILES = sorted((REPO / "values").glob("*.yaml"))
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# Combinations users are told to run (a hardware profile plus openshift or the external server).
COMBINATIONS = [
    ("values/gpu4.yaml", "values/openshift.yaml"),
    ("values/cpu.yaml", "values/external-postgres.yaml"),
]
SALESFC_COMPONENTS = ("prep", "trainer", "infer", "test")


def serving_enabled(files: tuple[str, ...]) -> bool:
    """Whether these values files turn the forecast service on (off in the chart's defaults), read from the files
    themselves so that a test expecting the service does not learn it from what it checks."""
    enabled = False
    for f in files:
        enabled = ((yaml.safe_load((REPO / f).read_text()) or {}).get("serving") or {}).get("enabled", enabled)
    return bool(enabled)


def spark_cluster(files: tuple[str, ...]) -> bool:
    """Whether these values files run the chart's Spark cluster (featureStore.offlineStore=spark, its cluster on by
    default), read from the files themselves, like serving_enabled."""
    store, cluster = "duckdb", True
    for f in files:
        spec = (yaml.safe_load((REPO / f).read_text()) or {}).get("featureStore") or {}
        store = spec.get("offlineStore", store)
        cluster = ((spec.get("spark") or {}).get("cluster") or {}).get("enabled", cluster)
    return store == "spark" and bool(cluster)


def values_cases() -> list[tuple[str, ...]]:
    """Every values file alone, the documented combinations, and the chart's defaults (no file)."""
    cases: list[tuple[str, ...]] = [()]
    cases += [(str(path.relative_to(REPO)),) for path in PROFILES + CI_VALUES]
    cases += COMBINATIONS
    return cases


def case_id(files: tuple[str, ...]) -> str:
    return "+".join(Path(f).stem for f in files) or "defaults"


def tool(name: str) -> Path:
    path = BIN / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: {INSTALL_HINT}", pytrace=False)
    return path


def shared_file(*parts: str) -> Path:
    path = SHARE.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} is missing: {INSTALL_HINT}", pytrace=False)
    return path


def tool_env() -> dict[str, str]:
    """PATH with the chart tools first (ct runs `helm`), then the venv's scripts (ct runs yamllint and yamale)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), str(Path(sys.executable).parent), env.get("PATH", "")])
    # Helm keeps caches and config under these; keep the tests away from the user's.
    for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
        env[var] = str(TOOLS / "helm-home" / sub)
    return env


def run(args: list[str], check: bool = False, cwd: Path = REPO) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=tool_env(), capture_output=True, text=True,
                            timeout=300)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}",
                    pytrace=False)
    return result


def helm_template_args(helm: str, files: tuple[str, ...] = (), sets: tuple[str, ...] = (),
                       release: str = RELEASE, namespace: str = NAMESPACE, api_versions: tuple[str, ...] = ()) -> list:
    args: list = [tool(helm), "template", release, CHART, "--namespace", namespace]
    for api in api_versions:  # what .Capabilities.APIVersions.Has finds: a cluster with these CRDs installed
        args += ["--api-versions", api]
    for f in files:
        args += ["--values", REPO / f]
    for s in sets:  # "json:key=value" sets a typed value: plain --set leaves 0.5 a string (the schema wants numbers)
        args += ["--set-json", s[5:]] if s.startswith("json:") else ["--set", s]
    return args


@dataclass(frozen=True)
class Rendered:
    """One `helm template` output: the text and its documents, Lists taken apart as Helm does on install."""

    text: str
    documents: tuple[dict, ...]  # as rendered, in Helm's install order (Lists kept)

    @functools.cached_property
    def objects(self) -> list[dict]:
        out: list[dict] = []
        for doc in self.documents:
            if doc.get("kind") == "List" and doc.get("apiVersion") == "v1":
                out.extend(doc.get("items") or [])
            else:
                out.append(doc)
        return out

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o.get("kind") == kind]

    def one(self, kind: str, component: str | None = None) -> dict:
        found = [o for o in self.of_kind(kind)
                 if component is None or labels(o).get("app.kubernetes.io/component") == component]
        assert len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}"
        return found[0]

    @property
    def runtime(self) -> dict:
        found = self.of_kind("ClusterTrainingRuntime") + self.of_kind("TrainingRuntime")
        assert len(found) == 1, f"expected one training runtime, found {len(found)}"
        return found[0]

    @property
    def trainjob(self) -> dict:
        """The TrainJob the launch hook creates: the one in the release's TrainJob ConfigMap."""
        data = self.one("ConfigMap", "trainer")["data"]
        return yaml.safe_load(data["trainjob.yaml"])

    def infer_job(self) -> dict:
        return self.one("Job", "infer")


def labels(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


def parse(text: str) -> tuple[dict, ...]:
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


@functools.lru_cache(maxsize=None)
def render(helm: str = "helm4", files: tuple[str, ...] = (), sets: tuple[str, ...] = (),
           release: str = RELEASE, namespace: str = NAMESPACE, api_versions: tuple[str, ...] = ()) -> Rendered:
    result = run(helm_template_args(helm, files, sets, release, namespace, api_versions))
    if result.returncode != 0:
        pytest.fail(f"helm template ({helm}, {case_id(files)}, {sets}) failed:\n{result.stderr}", pytrace=False)
    return Rendered(result.stdout, parse(result.stdout))


def pod_specs(rendered: Rendered) -> list[tuple[str, dict, dict]]:
    """(where, pod metadata, pod spec) of every pod the release runs, the trainer's (runtime template) included."""
    found = []
    for obj in rendered.objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        spec = obj.get("spec") or {}
        if kind == "Pod":
            found.append((f"Pod/{name}", obj["metadata"], spec))
        elif kind in ("Job", "StatefulSet", "Deployment", "DaemonSet"):
            found.append((f"{kind}/{name}", spec["template"].get("metadata", {}), spec["template"]["spec"]))
        elif kind in ("ClusterTrainingRuntime", "TrainingRuntime"):
            for rjob in spec["template"]["spec"]["replicatedJobs"]:
                pod = rjob["template"]["spec"]["template"]
                found.append((f"{kind}/{name}/{rjob['name']}", pod.get("metadata", {}), pod["spec"]))
    return found


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or []) + \
        list(spec.get("ephemeralContainers") or [])
