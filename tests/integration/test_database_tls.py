"""sslmode verify-ca/verify-full against a real PostgreSQL serving TLS with a test CA: the CA the chart mounts
(PGSSLROOTCERT) verifies it; a wrong or missing CA fails at once, saying what to do, instead of waiting out the
database timeout."""

from __future__ import annotations

import subprocess

import pytest

from private_postgres import private_server
from salesfc.errors import UserError
from salesfc.feature_store import Endpoint

pytestmark = pytest.mark.postgres


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certificate_authority(folder, name: str):
    key, crt = folder / f"{name}.key", folder / f"{name}.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2",
            "-subj", f"/CN={name}")
    return key, crt


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    ca_key, ca_crt = certificate_authority(folder, "salesfc-test-ca")
    _, other_ca = certificate_authority(folder, "some-other-ca")
    key, csr, crt, ext = (folder / n for n in ("server.key", "server.csr", "server.crt", "san.ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(crt), "-days", "2", "-extfile", str(ext))
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
