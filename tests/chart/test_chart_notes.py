"""NOTES.txt tells the user what runs, what to watch, how to test, where the results land and what uninstall keeps."""

from __future__ import annotations

import pytest

from chartlib import CHART, TOOLS, render, run, tool

pytestmark = pytest.mark.chart


def notes(*sets: str) -> str:
    # Helm 4 renders NOTES with --dry-run=client and no cluster; Helm 3 wants a cluster for that.
    args = [tool("helm4"), "install", "demo", CHART, "--dry-run=client", "--namespace", "forecasting"]
    for s in sets:
        args += ["--set", s]
    result = run(args + ["--kubeconfig", TOOLS / "no-such-kubeconfig"])
    assert result.returncode == 0, result.stderr
    assert "NOTES:" in result.stdout, result.stdout
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_name_what_runs_and_where_results_land():
    text = notes()
    rendered = render("helm4", (), (), "demo", "forecasting")
    trainjob = rendered.trainjob["metadata"]["name"]
    infer = rendered.infer_job()["metadata"]["name"]
    for expected in (f"kubectl -n forecasting get trainjob {trainjob}", f"job/{infer}",
                     "helm test demo -n forecasting", f"/shared/reports/{trainjob}/", f"/shared/models/{trainjob}/",
                     "pvc/demo-salesfc-shared", "pvc/data-demo-salesfc-postgresql-0", "secret/demo-salesfc-postgresql",
                     "condition=Complete trainjob/", "{.status.trainerStatus}",
                     f"salesfc submit --runtime {rendered.runtime['metadata']['name']} --namespace forecasting"):
        assert expected in text, f"NOTES lack {expected!r}:\n{text}"


def test_notes_follow_what_is_kept():
    text = notes("sharedStorage.keepOnUninstall=false", "postgresql.persistence.retainOnUninstall=false",
                 "postgresql.auth.keepOnUninstall=false")
    assert "pvc/demo-salesfc-shared" not in text
    assert "pvc/data-demo-salesfc-postgresql-0" not in text
    assert "secret/demo-salesfc-postgresql" not in text
    rendered = render("helm4", (), ("sharedStorage.keepOnUninstall=false",
                                    "postgresql.persistence.retainOnUninstall=false",
                                    "postgresql.auth.keepOnUninstall=false"))
    assert "annotations" not in rendered.one("PersistentVolumeClaim")["metadata"]
    assert rendered.one("StatefulSet")["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    kept = render("helm4")
    assert kept.one("PersistentVolumeClaim")["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert kept.one("Secret")["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert kept.one("StatefulSet")["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
