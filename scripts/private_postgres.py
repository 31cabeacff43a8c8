"""A private, throwaway PostgreSQL server for the tests and the benchmarks.

It runs from the Debian ``postgresql`` package that scripts/setup.sh --test installs, with its own data
directory, port and generated password, durability off (fsync, synchronous_commit: nothing here must survive a
crash), and is removed when the ``private_server()`` block ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from processes import free_port


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    bindir: Path
    # What stop() and start() need; a server someone else runs has none of it.
    data: Path | None = None
    options: str = ""
    log: Path | None = None
    run_as: list[str] = field(default_factory=list)

    def env(self, database: str) -> dict:
        """The settings salesfc reads, pointing at ``database`` on this server."""
        return {"SALESFC_PG_HOST": self.host, "SALESFC_PG_PORT": str(self.port), "SALESFC_PG_DATABASE": database,
                "SALESFC_PG_USER": self.user, "SALESFC_PG_PASSWORD": self.password, "SALESFC_PG_SSLMODE": "disable"}

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               dbname=database, autocommit=True)

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), as an outage would; start() brings it back."""
        _run([*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def start(self) -> None:
        _run([*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", self.options, "-l",
              str(self.log), "-w", "start"])


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL is not installed: run `bash scripts/setup.sh --test` (installs postgresql)")


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


@contextlib.contextmanager
def private_server(tls: tuple[Path, Path] | None = None, more_options: str = "") -> Iterator[PostgresServer]:
    """tls: (certificate, key) files to serve TLS with (the server still accepts plain connections). more_options:
    the server's own settings (e.g. "-c ssl=on ..." as the chart renders them, with files of the caller's)."""
    bindir = _pg_bindir()
    # Not under pytest's tmp dir: that is private to root, and the server runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="salesfc-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    password = secrets.token_urlsafe(16)
    (root / "pwfile").write_text(password + "\n")
    # initdb refuses to run as root: run the server as the package's postgres user then.
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    owned = [root, sockets, root / "pwfile"]
    if tls:
        # The server refuses a key that others can read.
        for source, name in zip(tls, ("server.crt", "server.key")):
            shutil.copyfile(source, root / name)
            (root / name).chmod(0o600)
            owned.append(root / name)
    if run_as:
        for path in owned:
            shutil.chown(path, "postgres")
    try:
        _run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "salesfc", "--auth=scram-sha-256",
              f"--pwfile={root / 'pwfile'}", "-E", "UTF8"])
        port = free_port()
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        if tls:
            options += f" -c ssl=on -c ssl_cert_file={root / 'server.crt'} -c ssl_key_file={root / 'server.key'}"
        options += f" {more_options}" if more_options else ""
        try:
            _run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
                  "start"])
        except RuntimeError as err:  # pg_ctl says "examine the log": the reason is there
            log = root / "log"
            raise RuntimeError(f"{err}server log:\n{log.read_text()[-2000:] if log.exists() else '(none)'}") from None
        yield PostgresServer("127.0.0.1", port, "salesfc", password, bindir, data, options, root / "log", run_as)
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
