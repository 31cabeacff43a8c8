"""Validators for rendered manifests: Kubernetes' own schemas (kubernetes-validate), the Kubeflow Trainer and JobSet
CRD schemas (jsonschema, made strict like the API server's field validation), and the CRDs' CEL rules (cel-python).
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Iterator

import celpy
import jsonschema
import kubernetes_validate.utils as kv
import referencing
import yaml

from chartlib import shared_file

# The Prometheus Operator release whose ServiceMonitor CRD scripts/install-chart-tools.sh fetches.
PROMETHEUS_OPERATOR = "v0.85.0"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29.0", kv.latest_version())


@functools.lru_cache(maxsize=None)
def _k8s_validator(kind: str, api_version: str, version: str) -> jsonschema.protocols.Validator:
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_dir = f"v{version}-local-strict"
    schema = kv.schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group_version}.json", version)
    definitions = kv.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)
    registry = referencing.Resource.from_contents(schema) @ referencing.Registry()
    registry = referencing.Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def k8s_errors(obj: dict, version: str) -> list[str]:
    """Errors of a built-in object against Kubernetes' strict schema (unknown fields are errors)."""
    try:
        validator = _k8s_validator(obj["kind"], obj["apiVersion"], version)
    except (FileNotFoundError, kv.SchemaNotFoundError, kv.VersionNotSupportedError) as err:
        return [f"no Kubernetes {version} schema for {obj['apiVersion']} {obj['kind']}: {err}"]
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(obj)]


def _strict(schema):
    """A CRD's structural schema as the API server applies it with strict field validation: unknown fields fail."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        if schema.get("nullable") and "type" in schema:
            schema["type"] = [schema["type"], "null"]
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def crd_schema(group: str, version: str, plural: str, release: str) -> dict:
    """openAPIV3Schema of the served version `version` of a CRD from a Trainer, JobSet or Prometheus Operator
    release."""
    if group == "trainer.kubeflow.org":
        path = shared_file("trainer", release, f"trainer.kubeflow.org_{plural}.yaml")
    elif group == "jobset.x-k8s.io":
        path = shared_file("jobset", release, f"jobset.x-k8s.io_{plural}.yaml")
    elif group == "monitoring.coreos.com":
        path = shared_file("prometheus-operator", release, f"monitoring.coreos.com_{plural}.yaml")
    else:
        raise ValueError(group)
    crd = yaml.safe_load(path.read_text())
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return served["schema"]["openAPIV3Schema"]
    raise AssertionError(f"{path} serves no version {version}")


@functools.lru_cache(maxsize=None)
def _crd_validator(group, version, plural, release) -> jsonschema.protocols.Validator:
    schema = _strict(copy.deepcopy(crd_schema(group, version, plural, release)))
    return jsonschema.Draft7Validator(schema)


def crd_errors(obj: dict, plural: str, release: str, schema_path: tuple = (), group=None) -> list[str]:
    """Errors of `obj` against the CRD schema (or against the sub-schema at `schema_path` of it)."""
    group = group or obj["apiVersion"].split("/")[0]
    version = "v1alpha2" if group == "jobset.x-k8s.io" else obj["apiVersion"].split("/")[1]
    validator = _crd_validator(group, version, plural, release)
    if schema_path:
        schema = validator.schema
        for key in schema_path:
            schema = schema["properties"][key]
        validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(obj)]


# --- CEL (x-kubernetes-validations) --------------------------------------------------------------------------------

_CEL = celpy.Environment()


@functools.lru_cache(maxsize=None)
def _cel_program(rule: str):
    return _CEL.program(_CEL.compile(rule))


def cel_rules(obj, schema: dict, old=None, path: str = "") -> Iterator[tuple[str, str, str, object, object]]:
    """(path, rule, message, self, oldSelf) for every CEL rule on a schema node that `obj` has a value at."""
    for rule in schema.get("x-kubernetes-validations") or []:
        yield path or "(root)", rule["rule"], rule.get("message", rule["rule"]), obj, old
    if isinstance(obj, dict):
        for key, value in obj.items():
            sub = (schema.get("properties") or {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                old_value = old.get(key) if isinstance(old, dict) else None
                yield from cel_rules(value, sub, old_value, f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            # Transition rules inside lists need list-type keys to pair items; not needed for these objects.
            yield from cel_rules(item, schema["items"], None, f"{path}[{index}]")


def cel_errors(obj: dict, schema: dict, old: dict | None = None) -> tuple[list[str], int]:
    """Failed CEL rules of `obj` (an update of `old` when given) and how many rules ran. Transition rules (oldSelf)
    run only on an update, as in the API server."""
    errors, ran = [], 0
    for path, rule, message, value, old_value in cel_rules(obj, schema, old):
        transition = "oldSelf" in rule
        if transition and old_value is None:
            continue
        activation = {"self": celpy.json_to_cel(value)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old_value)
        ran += 1
        try:
            result = _cel_program(rule).evaluate(activation)
        except Exception as err:  # a rule this evaluator cannot run must not pass silently
            errors.append(f"{path}: cannot evaluate CEL rule {rule!r}: {err}")
            continue
        if isinstance(result, celpy.CELEvalError):
            errors.append(f"{path}: CEL rule {rule!r} failed to evaluate: {result}")
        elif not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(f"{path}: {message} (rule {rule!r} gave {result})")
    return errors, ran
