"""Fixtures of the image tests: the local base, the trainer image built from image/Containerfile, one container.

Everything goes through buildah with the vfs storage driver and chroot isolation (no daemon, no registry, works
in an unprivileged CI container as root). The build is the real one: `buildah bud -f image/Containerfile` from the
repository root, only with a local base (`scripts/build-test-base.sh`: Debian from debootstrap, no torch, so the
build installs the pinned torch from the lock) and a host wheelhouse mounted in place of the index, so that a
rerun does not download the ~3 GB of wheels again. Timings and the image size go to .cache/image-test/metrics.json
and to the end of the pytest report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "image-test"
WHEELS = CACHE / "wheels"
LOCK = REPO / "image" / "requirements.lock"
BASE_IMAGE = "localhost/salesfc-test-base:bookworm"
VERSION = tomllib.loads((REPO / "image" / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"localhost/salesfc-trainer:{VERSION}-test"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
INSTALL_HINT = "run scripts/install-image-tools.sh (as root)"

# What the build and the run took, for the summary at the end of the report (and metrics.json).
METRICS: dict[str, object] = {}


def buildah(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run buildah (vfs storage); on failure, fail the test with the command and its output."""
    command = [*BUILDAH, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}"
                    f"\n--- stderr\n{result.stderr[-6000:]}", pytrace=False)
    return result


def image_exists(name: str) -> bool:
    return buildah("inspect", "--type", "image", name, check=False).returncode == 0


def image_size_bytes(name: str) -> int:
    manifest = json.loads(buildah("inspect", "--type", "image", "--format", "{{.Manifest}}", name).stdout)
    return sum(layer["size"] for layer in manifest["layers"])


def pip_platform_args() -> list[str]:
    """pip download options for CPython 3.11 on x86_64 glibc <= 2.36 (Debian bookworm, the test base), whatever
    interpreter runs the tests: pip does not widen a `manylinux_2_36` platform to older glibc versions itself."""
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    args = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
            "--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    for platform in platforms:
        args += ["--platform", platform]
    return args


def fill_wheelhouse(python: str) -> float:
    """Download every wheel of requirements.lock into .cache/image-test/wheels, once per lock content."""
    stamp = WHEELS / ".lock-sha256"
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return 0.0
    start = time.monotonic()
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir(parents=True)
    command = [python, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(WHEELS),
               "--requirement", str(LOCK), *pip_platform_args()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        pytest.fail(f"filling the wheelhouse failed ({' '.join(command)}):\n{result.stderr[-4000:]}", pytrace=False)
    stamp.write_text(digest + "\n")
    return time.monotonic() - start


@pytest.fixture(scope="session")
def image_tools() -> None:
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: {INSTALL_HINT}", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the image tests build with buildah (vfs, chroot isolation) and debootstrap: run them as root",
                    pytrace=False)


@pytest.fixture(scope="session")
def test_base(image_tools) -> str:
    """localhost/salesfc-test-base:bookworm, built by scripts/build-test-base.sh unless it is already there."""
    existed = image_exists(BASE_IMAGE)
    start = time.monotonic()
    result = subprocess.run([str(REPO / "scripts" / "build-test-base.sh")], capture_output=True, text=True,
                            timeout=1200)
    if result.returncode != 0:
        pytest.fail(f"scripts/build-test-base.sh failed:\n{result.stderr[-6000:]}", pytrace=False)
    METRICS["base_build_s"] = None if existed else round(time.monotonic() - start, 1)
    return BASE_IMAGE


@pytest.fixture(scope="session")
def trainer_image(test_base, python) -> str:
    """The trainer image, built once per session from image/Containerfile on the test base."""
    CACHE.mkdir(parents=True, exist_ok=True)
    METRICS["wheelhouse_s"] = round(fill_wheelhouse(python), 1)
    if image_exists(IMAGE):  # the previous session's: remove it, or every run leaves ~7 GB behind
        buildah("rmi", "--force", IMAGE)
    log = CACHE / "build.log"
    command = [
        *BUILDAH, "bud", "--isolation", "chroot", "--pull=never", "--file", "image/Containerfile", "--tag", IMAGE,
        # One new layer for the whole build: vfs stores every layer as a full copy of the file system, so a layer
        # per instruction would copy the ~7 GB venv once per instruction after it.
        "--layers=false",
        "--build-arg", f"BASE_IMAGE={test_base}", "--build-arg", f"VERSION={VERSION}",
        # The lock's wheels from the host instead of PyPI: the Containerfile's own knobs, nothing test-only.
        "--volume", f"{WHEELS}:/run/wheels:ro", "--build-arg", "PIP_FIND_LINKS=/run/wheels",
        "--build-arg", "PIP_NO_INDEX=1",
        ".",
    ]
    start = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    METRICS["image_build_s"] = round(time.monotonic() - start, 1)
    if result.returncode != 0:
        tail = log.read_text()[-6000:]
        pytest.fail(f"buildah bud exited {result.returncode} (full log: {log}):\n{tail}", pytrace=False)
    METRICS["image"] = IMAGE
    METRICS["image_size_gb"] = round(image_size_bytes(IMAGE) / 1e9, 2)
    return IMAGE


@pytest.fixture(scope="session")
def container(trainer_image):
    """One working container of the image for all checks (vfs copies the whole image for each one); removed at
    the end of the session. The image stays for the next tests and for a look by hand."""
    start = time.monotonic()
    name = buildah("from", "--pull=never", trainer_image).stdout.strip().splitlines()[-1]
    METRICS["container_create_s"] = round(time.monotonic() - start, 1)
    yield name
    buildah("rm", name, check=False)


@pytest.fixture(scope="session")
def run_in(container):
    """run_in(*command, user=None, env=None) -> CompletedProcess: a command in the container, as the image's user
    unless told otherwise. The hostname is left as buildah's chroot isolation makes it up, in no /etc/hosts:
    `salesfc train --nproc-per-node N` must still start its torchrun workers (they meet on 127.0.0.1)."""

    def run(*command: str, user: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        args = ["run", "--isolation", "chroot"]
        if user:
            args += ["--user", user]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        return buildah(*args, container, "--", *command, timeout=timeout, check=False)

    return run


@pytest.fixture(scope="session")
def image_metrics() -> dict[str, object]:
    """Timings and sizes for the report summary: tests add theirs (e.g. the demo's run time)."""
    return METRICS


@pytest.fixture(scope="session")
def image_version() -> str:
    """The version the image is built with (the package's, from image/pyproject.toml)."""
    return VERSION


@pytest.fixture(scope="session")
def image_config(trainer_image) -> dict:
    """The image's OCI config: User, Env, Cmd, Entrypoint, Labels, WorkingDir."""
    return json.loads(buildah("inspect", "--type", "image", trainer_image).stdout)["OCIv1"]["config"]


def pytest_terminal_summary(terminalreporter) -> None:
    if not METRICS:
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "metrics.json").write_text(json.dumps(METRICS, indent=2) + "\n")
    base = METRICS.get("base_build_s")
    parts = [
        f"image {METRICS.get('image', IMAGE)}",
        f"size {METRICS.get('image_size_gb', '?')} GB",
        f"build {METRICS.get('image_build_s', '?')} s",
        f"base {'reused' if base is None else f'{base} s'}",
        f"wheelhouse {METRICS.get('wheelhouse_s', '?')} s",
        f"container {METRICS.get('container_create_s', '?')} s",
    ]
    if "demo_s" in METRICS:
        parts.append(f"demo {METRICS['demo_s']} s")
    terminalreporter.write_sep("-", "trainer image")
    terminalreporter.write_line(", ".join(parts) + f"  ({CACHE / 'metrics.json'})")
