"""Shared test fixtures: the repository, the salesfc CLI, and a real PostgreSQL server.

The PostgreSQL fixture starts a private server (its own data directory, port and password) from the Debian
``postgresql`` package that scripts/setup.sh --test installs, and stops it at the end of the session. Each test
that asks for ``pg`` gets a fresh database on it.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from private_postgres import PostgresServer, private_server  # noqa: E402


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def python() -> str:
    """The interpreter running the tests: the venv that has salesfc installed."""
    return sys.executable


def salesfc(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 900,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run the salesfc CLI in a subprocess, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SALESFC_")}
    full_env.update(env or {})
    result = subprocess.run([sys.executable, "-m", "salesfc", *args], capture_output=True, text=True, env=full_env,
                            cwd=cwd or REPO, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"salesfc {' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout}\n"
                             f"--- stderr\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def run_salesfc():
    return salesfc


# -- PostgreSQL ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    with private_server() as server:
        yield server


_databases = itertools.count()


@pytest.fixture
def pg(postgres_server) -> tuple[PostgresServer, str]:
    """A fresh, empty database on the session's server: (server, database name)."""
    name = f"salesfc_test_{os.getpid()}_{next(_databases)}"
    postgres_server.create_database(name)
    yield postgres_server, name
    postgres_server.drop_database(name)
