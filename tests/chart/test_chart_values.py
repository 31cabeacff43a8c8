"""values.schema.json rejects bad values with a message naming them; the chart's own checks do the same; every value
is documented, and the chart README's table is the values.yaml documentation."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from chartlib import CHART, HELMS, REPO, PROFILES, CI_VALUES, run, tool

pytestmark = pytest.mark.chart

SCHEMA = json.loads((CHART / "values.schema.json").read_text())

# (values, what the error must name). Each is a complete values file overlay.
BAD_VALUES = [
    ({"training": {"epochs": -1}}, "training/epochs"),
    ({"training": {"epochs": 0}}, "training/epochs"),
    ({"training": {"gpusPerNode": "4"}}, "training/gpusPerNode"),
    ({"training": {"gpusPerNode": 2.5}}, "training/gpusPerNode"),
    ({"training": {"numProcPerNode": "auto"}}, "training/numProcPerNode"),
    ({"training": {"numProcPerNode": 1.5}}, "training/numProcPerNode"),
    ({"training": {"numNodes": 0}}, "training/numNodes"),
    ({"training": {"lr": 0}}, "training/lr"),
    ({"training": {"dropout": 1}}, "training/dropout"),
    ({"training": {"hidden": []}}, "training/hidden"),
    ({"training": {"hidden": [256, "x"]}}, "training/hidden"),
    ({"training": {"device": "gpu"}}, "training/device"),
    ({"training": {"runtime": {"kind": "PyTorchJob"}}}, "training/runtime/kind"),
    ({"training": {"epoch": 10}}, "'epoch'"),
    ({"trainig": {"epochs": 10}}, "'trainig'"),
    ({"training": {"resources": {"limits": None}}}, "training/resources"),
    ({"prep": {"resources": {"limits": {"cpu": "1", "memory": None}}}}, "prep/resources/limits"),
    ({"training": {"resources": {"requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": 1},
                                 "limits": {"cpu": "1", "memory": "1Gi"}}}}, "nvidia.com/gpu"),
    ({"data": {"source": "csv"}}, "data/source"),
    ({"data": {"size": "huge"}}, "data/size"),
    ({"featureStore": {"offlineStore": "file"}}, "featureStore/offlineStore"),
    ({"image": {"tag": "latest"}}, "image/tag"),
    ({"image": {"digest": "sha256:abc"}}, "image/digest"),
    ({"postgresql": {"external": {"sslmode": "on"}}}, "postgresql/external/sslmode"),
    ({"postgresql": {"external": {"port": "5432"}}}, "postgresql/external/port"),
    ({"postgresql": {"password": "feast123"}}, "'password'"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "podSecurityContext/runAsNonRoot"),
    ({"podSecurityContext": {"runAsUser": 0}}, "podSecurityContext/runAsUser"),
    ({"containerSecurityContext": {"allowPrivilegeEscalation": True}},
     "containerSecurityContext/allowPrivilegeEscalation"),
    ({"containerSecurityContext": {"capabilities": {"drop": ["NET_RAW"]}}},
     "containerSecurityContext/capabilities/drop"),
    ({"tests": {"maxWmaeRatio": 0}}, "tests/maxWmaeRatio"),
    ({"inference": {"waitTimeout": -5}}, "inference/waitTimeout"),
    ({"sharedStorage": {"size": "ten gigs"}}, "sharedStorage/size"),
]

# Values the schema accepts but the templates refuse, with the words the message must contain.
BAD_COMBINATIONS = [
    ({"training": {"gpusPerNode": 4, "numProcPerNode": 2, "device": "cuda"}}, "training.numProcPerNode (2) must equal"),
    ({"training": {"gpusPerNode": 0, "device": "cuda"}}, "training.device is cuda"),
    ({"training": {"gpusPerNode": 1, "numProcPerNode": 1, "device": "cpu"}}, "training.device is cpu"),
    ({"postgresql": {"external": {"enabled": True, "existingSecret": "db"}}}, "postgresql.external.host"),
    ({"postgresql": {"external": {"enabled": True, "host": "db"}}}, "postgresql.external.existingSecret"),
    ({"postgresql": {"external": {"enabled": True, "host": "db", "existingSecret": "db", "sslmode": "verify-full"}}},
     "postgresql.external.sslmode verify-full verifies the server's certificate against a CA, but none is given"),
    ({"postgresql": {"tls": {"enabled": True}, "sslmode": "verify-full"}},
     "postgresql.tls.enabled needs postgresql.tls.existingSecret"),
    ({"postgresql": {"tls": {"enabled": True, "existingSecret": "pg-tls"}}},
     "postgresql.sslmode disable lets salesfc connect without it"),
    ({"postgresql": {"sslmode": "require"}}, "postgresql.sslmode require needs TLS"),
    ({"sharedStorage": {"accessMode": "ReadWriteOnce"}, "training": {"numNodes": 2}},
     "sharedStorage.accessMode ReadWriteOnce cannot serve training.numNodes 2"),
    ({"sharedStorage": {"accessMode": "ReadWriteOnce"}, "training": {"maxRestarts": 0, "numNodes": 3}},
     "Use ReadWriteMany"),
]


def write_values(tmp_path, values: dict):
    path = tmp_path / "bad-values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_schema_is_draft7_and_strict():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"

    def objects(node, path="(root)"):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                yield path, node
            for key, value in node.items():
                yield from objects(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from objects(value, f"{path}[{index}]")

    loose = [path for path, node in objects(SCHEMA) if node.get("additionalProperties") is not False]
    assert not loose, f"object schemas without additionalProperties: false: {loose}"


@pytest.mark.parametrize("path", [CHART / "values.yaml", *PROFILES, *CI_VALUES], ids=lambda p: p.name)
def test_values_files_pass_the_schema_alone(path):
    """Each file must at least be valid as an overlay: its keys exist and have the right types."""
    values = yaml.safe_load(path.read_text()) or {}
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(base, overlay):
        for key, value in overlay.items():
            if value is None:
                base.pop(key, None)
            elif isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(merge(defaults, values))]
    assert not errors, errors


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("values,named", BAD_VALUES, ids=[str(v) for v, _ in BAD_VALUES])
def test_bad_value_is_rejected_naming_it(helm, values, named, tmp_path):
    result = run([tool(helm), "template", "demo", CHART, "--values", write_values(tmp_path, values)])
    assert result.returncode != 0, f"{values} was accepted"
    assert named in result.stderr, f"the error does not name {named}:\n{result.stderr}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("values,named", BAD_COMBINATIONS, ids=[str(v) for v, _ in BAD_COMBINATIONS])
def test_bad_combination_fails_with_a_message(helm, values, named, tmp_path):
    result = run([tool(helm), "template", "demo", CHART, "--values", write_values(tmp_path, values)])
    assert result.returncode != 0, f"{values} was accepted"
    assert named in result.stderr, f"the error does not say {named!r}:\n{result.stderr}"


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("image", ["image", "postgresql.image"])
def test_latest_tag_is_refused_even_without_the_schema(helm, image):
    result = run([tool(helm), "template", "demo", CHART, "--skip-schema-validation", "--set", f"{image}.tag=latest"])
    assert result.returncode != 0
    assert "image tag 'latest' is not allowed" in result.stderr, result.stderr


@pytest.mark.parametrize("helm", HELMS)
def test_release_name_must_start_with_a_letter(helm):
    result = run([tool(helm), "template", "2024-forecast", CHART])
    assert result.returncode != 0
    assert "must start with a letter" in result.stderr, result.stderr


# --- documentation ------------------------------------------------------------------------------------------------

PARAM = re.compile(r"^\s*## @param (\S+) (.+)$")


def documented_params() -> dict[str, str]:
    return {m.group(1): m.group(2) for line in (CHART / "values.yaml").read_text().splitlines()
            if (m := PARAM.match(line))}


def value_leaves(node, prefix="") -> list[str]:
    """Dotted paths of the values a user sets: leaves, and maps/lists that are set as a whole."""
    if isinstance(node, dict) and node:
        out = []
        for key, value in node.items():
            out += value_leaves(value, f"{prefix}.{key}" if prefix else key)
        return out
    return [prefix]


WHOLE = {"podSecurityContext", "containerSecurityContext", "postgresql.podSecurityContext",
         "postgresql.containerSecurityContext", "postgresql.resources", "prep.resources", "training.resources",
         "inference.resources", "tests.resources", "networkPolicy.dnsPorts", "serving.resources",
         "launch.resources", "networkPolicy.apiServer.ports", "featureStore.spark.master.resources",
         "featureStore.spark.workers.resources", "featureStore.spark.conf"}


def test_every_value_is_documented(chart_values):
    params = documented_params()
    leaves = set(value_leaves(chart_values))
    expected = {leaf for leaf in leaves if not any(leaf.startswith(w + ".") for w in WHOLE)} | WHOLE
    missing = sorted(expected - set(params))
    unknown = sorted(set(params) - expected)
    assert not missing, f"values without a '## @param' line: {missing}"
    assert not unknown, f"'## @param' lines naming no value: {unknown}"


def values_table() -> str:
    lines = ["| Name | Description | Default |", "| ---- | ----------- | ------- |"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for name, description in documented_params().items():
        value = defaults
        for part in name.split("."):
            value = value[part]
        shown = json.dumps(value) if not isinstance(value, str) else f'"{value}"'
        if len(shown) > 60:
            shown = "see values.yaml"
        lines.append(f"| `{name}` | {description.replace('|', '/')} | `{shown}` |")
    return "\n".join(lines)


def test_readme_values_table_matches_values_yaml():
    readme = (CHART / "README.md").read_text()
    start, end = "<!-- values-table:start -->", "<!-- values-table:end -->"
    assert start in readme and end in readme, "charts/salesfc/README.md lacks the values table markers"
    table = readme.split(start, 1)[1].split(end, 1)[0].strip()
    assert table == values_table(), ("the README's values table is out of date; replace it with:\n\n"
                                     + values_table())


def test_profiles_are_documented_in_readme():
    readme = (CHART / "README.md").read_text()
    for path in PROFILES:
        assert f"values/{path.name}" in readme, f"the chart README does not mention values/{path.name}"
    assert (REPO / "values" / "gpu4.yaml").exists()
