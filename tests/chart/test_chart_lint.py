"""chart-testing and `helm lint --strict`, with both Helm 3 and Helm 4, on every values file."""

from __future__ import annotations

import pytest

from chartlib import (CHART, HELMS, REPO, case_id, run, shared_file, tool, values_cases)

pytestmark = pytest.mark.chart


def test_tool_versions():
    """The pinned tools are the ones installed (a stale .tools would test against the wrong Helm)."""
    expected = {"helm3": "v3.21.4", "helm4": "v4.1.4"}
    for helm, version in expected.items():
        out = run([tool(helm), "version", "--template", "{{.Version}}"], check=True).stdout.strip()
        assert out.startswith(version), f"{helm} is {out}, expected {version}: run scripts/install-chart-tools.sh"
    out = run([tool("ct"), "version"], check=True).stdout
    assert "v3.14.0" in out, out


def test_ct_lint():
    """`ct lint` with the repository's ct.yaml: yamale on Chart.yaml, yamllint, helm lint per ci/*-values.yaml."""
    result = run([tool("ct"), "lint", "--config", REPO / "ct.yaml", "--charts", CHART,
                  "--chart-yaml-schema", shared_file("ct", "chart_schema.yaml"),
                  "--lint-conf", shared_file("ct", "lintconf.yaml")])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All charts linted successfully" in output, output
    # ct lint runs helm lint once per ci values file: make sure it saw all of them.
    for values in sorted((CHART / "ci").glob("*-values.yaml")):
        assert f'values file "{values.relative_to(REPO)}"' in output or str(values.name) in output, \
            f"ct lint did not lint with {values.name}:\n{output}"
    assert "[ERROR]" not in output, output


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("files", values_cases(), ids=case_id)
def test_helm_lint_strict(helm, files):
    args = [tool(helm), "lint", "--strict", CHART, "--namespace", "forecasting"]
    for f in files:
        args += ["--values", REPO / f]
    result = run(args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "0 chart(s) failed" in output, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def test_profiles_pass_yamllint():
    """ct lint runs yamllint on the chart's values files only; the profiles in values/ get the same rules here."""
    import sys
    from pathlib import Path

    files = sorted((REPO / "values").glob("*.yaml"))
    assert files
    yamllint = Path(sys.executable).parent / "yamllint"
    result = run([yamllint, "--strict", "--config-file", shared_file("ct", "lintconf.yaml"), *files])
    assert result.returncode == 0, result.stdout + result.stderr
