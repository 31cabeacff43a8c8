"""A user name for Spark's JVMs when the process runs as a UID with no passwd entry (OpenShift's arbitrary UIDs).

Hadoop's file system code, which Spark reads parquet through, logs the current OS user in and stops at "Invalid
UID, could not determine effective user" when getpwuid() knows no name for it. nss_wrapper (installed in the image
beside the Java runtime) answers getpwuid() from a file of ours instead: the JVMs started after ``prepare()`` (a
driver's, through pyspark) see the user salesfc with this UID and HOME.

The Spark master and workers of the chart (and scripts/spark_cluster.py's) start through this module too:

    python -m salesfc.spark_env spark-class org.apache.spark.deploy.worker.Worker ...
"""

from __future__ import annotations

import glob
import os
import pwd
import sys
import tempfile

from salesfc.errors import UserError

# Where Debian/Ubuntu and RHEL-family images put the library.
NSS_WRAPPER = ("/usr/lib/*-linux-gnu/libnss_wrapper.so", "/usr/lib64/libnss_wrapper.so", "/usr/lib/libnss_wrapper.so")
USER = "salesfc"


def prepare(environ=os.environ) -> None:
    """Give the JVMs this process starts a name for its UID, if it has none (nothing to do otherwise)."""
    uid = os.getuid()
    try:
        pwd.getpwuid(uid)
        return
    except KeyError:
        pass
    library = next((hit for pattern in NSS_WRAPPER for hit in sorted(glob.glob(pattern))), None)
    if library is None:
        raise UserError(f"UID {uid} has no passwd entry, which Spark's file system code needs: install nss_wrapper "
                        "(Debian: libnss-wrapper; RHEL: nss_wrapper-libs; the salesfc image has it) or run as a "
                        "user with an entry")
    home = environ.get("HOME") or tempfile.gettempdir()
    with open("/etc/passwd") as system:
        entries = system.read()
    handle, path = tempfile.mkstemp(prefix="salesfc-passwd-")
    with os.fdopen(handle, "w") as out:
        out.write(entries.rstrip("\n") + f"\n{USER}:x:{uid}:{os.getgid()}:salesfc:{home}:/sbin/nologin\n")
    environ.update({"LD_PRELOAD": library, "NSS_WRAPPER_PASSWD": path, "NSS_WRAPPER_GROUP": "/etc/group",
                    "HOME": home})


def main(argv: list[str] | None = None) -> None:
    command = sys.argv[1:] if argv is None else argv
    if not command:
        raise SystemExit("usage: python -m salesfc.spark_env COMMAND [ARG ...]")
    prepare()
    # pyspark's launchers look for their Spark with the first python3 on PATH unless SPARK_HOME says where it is.
    import pyspark

    os.environ.setdefault("SPARK_HOME", os.path.dirname(pyspark.__file__))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
