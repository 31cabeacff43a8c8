"""Run the tests on the lowest versions image/pyproject.toml allows, to show its floors are true.

Each ``name>=X`` dependency is installed at exactly X, without its dependencies, into a folder of its own that goes
first on PYTHONPATH, so it shadows the locked version in the venv and everything else stays as locked. Left out:
feast (a one-minor range, its floor is the lock), kubeflow (pinned), and torch (its floor needs a CUDA wheel set
of ~3 GB; the APIs salesfc calls are listed beside the floor). Not in `make test`: it downloads ~150 MB each time.

    .venv/bin/python scripts/check_floors.py                 # unit tests, then the local pipeline and serve tests
    .venv/bin/python scripts/check_floors.py -- tests/unit   # other pytest arguments
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SKIP = {"feast", "kubeflow", "torch"}
# Installed without dependencies, a floor can need an older neighbour than the lock's: the version it was built for.
COMPANIONS = {"fastapi": ["starlette==0.38.6"]}
SHOW_VERSIONS = ("import importlib.metadata as m, sys; "
                 "print('imported:', ' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))")
DEFAULT_TESTS = ["tests/unit", "tests/integration/test_local_pipeline.py", "tests/integration/test_serve.py",
                 "-m", "not postgres"]


def floors(pyproject: Path) -> dict[str, str]:
    found = {}
    for requirement in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?>=([0-9][^,;<]*)(,.*)?", requirement.replace(" ", ""))
        if match and match.group(1).lower() not in SKIP:
            found[match.group(1)] = match.group(3)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pytest_args", nargs="*", help="after --: what pytest runs (default: %(default)s)",
                        default=DEFAULT_TESTS)
    args = parser.parse_args()
    lowest = floors(REPO / "image" / "pyproject.toml")
    pins = [f"{name}=={version}" for name, version in lowest.items()]
    pins += [extra for name in lowest for extra in COMPANIONS.get(name, [])]
    with tempfile.TemporaryDirectory(prefix="salesfc-floors-") as target:
        print("floors:", " ".join(pins), flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, *pins],
                       check=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [target, os.environ.get("PYTHONPATH")]))}
        # What the tests will import: the floors, not the venv's versions.
        subprocess.run([sys.executable, "-c", SHOW_VERSIONS, *(pin.split("==")[0] for pin in pins)], env=env,
                       check=True)
        return subprocess.call([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args.pytest_args],
                               cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
