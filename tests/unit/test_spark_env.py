"""salesfc.spark_env: a passwd entry for a UID that has none (OpenShift's arbitrary UIDs), for Spark's JVMs only."""

from __future__ import annotations

import os
import pwd

import pytest

from salesfc import spark_env
from salesfc.errors import UserError


def unknown_uid(uid):
    raise KeyError(f"getpwuid(): uid not found: {uid}")


def test_a_known_uid_changes_nothing():
    environ = {"HOME": "/somewhere"}
    spark_env.prepare(environ)
    assert environ == {"HOME": "/somewhere"}


def test_an_unknown_uid_gets_a_name_through_nss_wrapper(monkeypatch, tmp_path):
    library = tmp_path / "libnss_wrapper.so"
    library.write_bytes(b"")
    monkeypatch.setattr(pwd, "getpwuid", unknown_uid)
    monkeypatch.setattr(spark_env, "NSS_WRAPPER", ("/nonexistent/*.so", str(library)))
    environ = {"HOME": "/opt/salesfc/home"}
    spark_env.prepare(environ)
    assert environ["LD_PRELOAD"] == str(library) and environ["NSS_WRAPPER_GROUP"] == "/etc/group"
    with open(environ["NSS_WRAPPER_PASSWD"]) as passwd:
        lines = passwd.read().splitlines()
    os.unlink(environ["NSS_WRAPPER_PASSWD"])
    # The system's entries stay (root's, for one), and ours names this UID with the home the JVM should use.
    assert lines[0].startswith("root:")
    assert lines[-1] == f"salesfc:x:{os.getuid()}:{os.getgid()}:salesfc:/opt/salesfc/home:/sbin/nologin"


def test_without_nss_wrapper_the_error_names_the_fix(monkeypatch):
    monkeypatch.setattr(pwd, "getpwuid", unknown_uid)
    monkeypatch.setattr(spark_env, "NSS_WRAPPER", ("/nonexistent/libnss_wrapper.so",))
    with pytest.raises(UserError, match="install nss_wrapper"):
        spark_env.prepare({})
