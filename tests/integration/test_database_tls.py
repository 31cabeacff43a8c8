"""sslmode verify-ca/verify-full against a real PostgreSQL serving TLS with a test CA: the CA the chart mounts
(PGSSLROOTCERT) verifies it; a wrong or missing CA fails at once, saying what to do, instead of waiting out the
database timeout."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from private_postgres import private_server
from salesfc.errors import UserError
from salesfc.feature_store import Endpoint

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[2]


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certificate_authority(folder, name: str):
    key, crt = folder / f"{name}.key", folder / f"{name}.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2",
            "-subj", f"/CN={name}")
    return key, crt


def server_certificate(folder) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key): a test CA and a certificate it signed for this machine."""
    ca_key, ca_crt = certificate_authority(folder, "salesfc-test-ca")
    key, csr, crt, ext = (folder / n for n in ("server.key", "server.csr", "server.crt", "san.ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return ca_crt, crt, key


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    ca_crt, crt, key = server_certificate(folder)
    _, other_ca = certificate_authority(folder, "some-other-ca")
    with private_server(tls=(crt, key)) as server:
        yield server, ca_crt, other_ca


def endpoint(server, sslmode: str) -> Endpoint:
    return Endpoint(server.host, server.port, "postgres", server.user, server.password, sslmode)


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_the_servers_ca_verifies_it(tls_server, monkeypatch, sslmode):
    server, ca, _ = tls_server
    monkeypatch.setenv("PGSSLROOTCERT", str(ca))
    db = endpoint(server, sslmode)
    assert db.unreachable() is None
    with db.connect() as conn:
        assert conn.pgconn.ssl_in_use


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_a_wrong_ca_fails_at_once_saying_what_to_do(tls_server, monkeypatch, sslmode):
    server, _, other_ca = tls_server
    monkeypatch.setenv("PGSSLROOTCERT", str(other_ca))
    with pytest.raises(UserError, match=f"does not verify with sslmode={sslmode}.*postgresql.external.caSecret"):
        endpoint(server, sslmode).unreachable()


def test_no_ca_at_all_fails_at_once(tls_server, monkeypatch, tmp_path):
    server, _, _ = tls_server
    monkeypatch.setenv("PGSSLROOTCERT", str(tmp_path / "missing.crt"))
    with pytest.raises(UserError, match="root certificate file"):
        endpoint(server, "verify-full").unreachable()


def test_a_server_that_is_not_up_yet_is_still_waited_for(tls_server, monkeypatch):
    server, ca, _ = tls_server
    monkeypatch.setenv("PGSSLROOTCERT", str(ca))
    down = Endpoint(server.host, 1, "postgres", server.user, server.password, "verify-full")
    assert down.unreachable()  # a reason to wait, not an error


# -- the chart's own server with postgresql.tls ------------------------------------------------------------------
HELM = Path(os.environ.get("TOOLS_DIR", REPO / ".tools")).resolve() / "bin" / "helm4"


def rendered_tls_release() -> tuple[dict, dict]:
    """The PostgreSQL StatefulSet and the prep Job of the chart-testing values that turn postgresql.tls on."""
    if not HELM.exists():
        pytest.skip(f"{HELM} is missing: scripts/install-chart-tools.sh installs it")
    out = subprocess.run([str(HELM), "template", "demo", str(REPO / "charts" / "salesfc"), "-n", "forecasting", "-f",
                          str(REPO / "charts" / "salesfc" / "ci" / "postgres-tls-values.yaml")],
                         capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    prep = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["labels"].get(
        "app.kubernetes.io/component") == "prep")
    return statefulset, prep


def mounted_as_the_kubelet_mounts(secret: dict, files: dict[str, Path], mode: int) -> Path:
    """A folder holding the Secret's items as the kubelet mounts them with the pod's fsGroup: root's files in the
    server's group, with the volume's defaultMode."""
    folder = Path(tempfile.mkdtemp(prefix="salesfc-tls-mount-"))
    folder.chmod(0o755)  # the server runs as the postgres user
    for item in secret["items"]:
        path = folder / item["path"]
        shutil.copyfile(files[item["key"]], path)
        if os.geteuid() == 0:
            os.chown(path, 0, grp.getgrnam("postgres").gr_gid)
        path.chmod(mode)
    return folder


def test_the_charts_own_server_serves_tls_that_its_pods_verify(tmp_path, monkeypatch):
    """The in-cluster server with postgresql.tls: a real PostgreSQL started with the StatefulSet's arguments and the
    Secret mounted with its defaultMode accepts verify-full connections made with what the prep Job's container
    gets (sslmode, PGSSLROOTCERT); the same key readable by others is refused by the server."""
    statefulset, prep = rendered_tls_release()
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[0] == "postgres"  # the image's entrypoint initializes the database for this first argument
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    mount_path = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tls")
    ca_crt, crt, key = server_certificate(tmp_path)
    files = {"tls.crt": crt, "tls.key": key, "ca.crt": ca_crt}

    world_readable = mounted_as_the_kubelet_mounts(volume["secret"], files, 0o444)
    with pytest.raises(RuntimeError, match="private key file"):
        with private_server(more_options=" ".join(args[1:]).replace(mount_path, str(world_readable))):
            pass

    mounted = mounted_as_the_kubelet_mounts(volume["secret"], files, volume["secret"]["defaultMode"])
    job_pod = prep["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in job_pod["containers"][0]["env"]}
    ca_volume = next(v for v in job_pod["volumes"] if v.get("secret", {}).get("secretName") ==
                     volume["secret"]["secretName"])
    ca_mount = next(m["mountPath"] for m in job_pod["containers"][0]["volumeMounts"] if m["name"] == ca_volume["name"])
    ca_folder = mounted_as_the_kubelet_mounts(ca_volume["secret"], files, 0o444)
    try:
        with private_server(more_options=" ".join(args[1:]).replace(mount_path, str(mounted))) as server:
            monkeypatch.setenv("PGSSLROOTCERT", env["PGSSLROOTCERT"].replace(ca_mount, str(ca_folder)))
            db = Endpoint("localhost", server.port, "postgres", server.user, server.password,
                          env["SALESFC_PG_SSLMODE"])
            assert env["SALESFC_PG_SSLMODE"] == "verify-full" and db.unreachable() is None
            with db.connect() as conn:
                assert conn.pgconn.ssl_in_use
    finally:
        for folder in (world_readable, mounted, ca_folder):
            shutil.rmtree(folder, ignore_errors=True)
