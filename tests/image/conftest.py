"""Fixtures of the image tests: the local base, the trainer image built from image/Containerfile, one container.

The build is the real one: `buildah bud -f image/Containerfile --layers` from the repository root, with pip
downloading the lock's wheels inside the build as it would anywhere, and only the base replaced by a local one
(`scripts/build-test-base.sh`: Debian from debootstrap, no torch, so the build installs the pinned torch).

Everything goes through buildah with chroot isolation and the overlay storage driver, in a storage of its own
(/var/lib/containers/salesfc-test; no daemon, no registry; needs root). Overlay, not vfs: vfs keeps every layer and
every container as a full copy, and committing the ~6 GB venv as one layer held three copies of it at once, which
ran a CI machine out of disk. With overlay and one layer per dependency group (image/install-requirements.sh) a
cold build (no cached layers) still peaks at 15-18.4 GB for a 7.6 GB image: buildah 1.28 keeps every step's container
(and so its upper directory) until the whole build ends, and writes each layer twice under /var/tmp while committing
it (sampled every 5 s, 2026-12-07: /var/tmp 6.2 GB while the 3.25 GB CUDA layer was committed). Splitting the groups
further (six layers of at most 1.5 GB) did not lower that peak (15.8 GB against 15.4 GB). So a cold build first checks
that the space is there (COLD_BUILD_GB), the peak and the space free before the build are measured each run (they go
with the timings and sizes to .cache/image-test/metrics.json and the end of the pytest report), and no build leaves
containers behind: a failed one's would hold its ~7 GB until someone removed them by hand, and the next run would
start with that much less.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from logged import run_logged  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "image-test"
LOCK = REPO / "image" / "requirements.lock"
BASE_IMAGE = "localhost/salesfc-test-base:bookworm"
VERSION = tomllib.loads((REPO / "image" / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"localhost/salesfc-trainer:{VERSION}-test"
# The tests' own storage, so that they never meet (or clash with the driver of) a person's default one;
# scripts/build-test-base.sh takes the same through the environment.
STORAGE_ROOT = "/var/lib/containers/salesfc-test"
STORAGE_RUNROOT = "/run/containers/salesfc-test"
STORAGE_ENV = {"SALESFC_TEST_STORAGE_ROOT": STORAGE_ROOT, "SALESFC_TEST_STORAGE_RUNROOT": STORAGE_RUNROOT}
BUILDAH = ["buildah", "--storage-driver", "overlay", "--root", STORAGE_ROOT, "--runroot", STORAGE_RUNROOT]
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Free space a build without cached dependency layers needs on the storage's file system: its measured peak (18.4 GB
# at most in six cold builds on the CI machine, 2026-12-06/07) and a little more.
COLD_BUILD_GB = 19.0
INSTALL_HINT = "run scripts/install-image-tools.sh (as root)"

# What the build and the run took, for the summary at the end of the report (and metrics.json).
METRICS: dict[str, object] = {}


def buildah(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run buildah (the tests' storage); on failure, fail the test with the command and its output."""
    command = [*BUILDAH, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}"
                    f"\n--- stderr\n{result.stderr[-6000:]}", pytrace=False)
    return result


def image_exists(name: str) -> bool:
    return buildah("inspect", "--type", "image", name, check=False).returncode == 0


def layer_sizes(name: str) -> list[int]:
    """The image's layers' sizes in bytes, base first."""
    manifest = json.loads(buildah("inspect", "--type", "image", "--format", "{{.Manifest}}", name).stdout)
    return [layer["size"] for layer in manifest["layers"]]


def cached_layers() -> bool:
    """Whether the storage holds images besides the test base: the layers of an earlier build with this lock, which
    the build reuses (a build without them installs the whole lock)."""
    images = buildah("images", "--all", "--noheading", "--format", "{{.ID}}").stdout.split()
    base = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", BASE_IMAGE).stdout.strip()
    return any(not base.startswith(image) for image in images)


def pip_build_args() -> list[str]:
    """The build's pip settings from this machine's (the Containerfile's own PIP_* knobs, nothing test-only): its
    index if it has one set, and its CA bundle, mounted beside the image's own (a TLS-intercepting proxy's CA must
    reach pip inside the build; mounting over the image's bundle would break ca-certificates there)."""
    args = []
    if os.environ.get("PIP_INDEX_URL"):
        args += ["--build-arg", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    bundle = os.environ.get("PIP_CERT") or ssl.get_default_verify_paths().cafile or HOST_CA_BUNDLE
    if bundle and Path(bundle).is_file():
        args += ["--volume", f"{bundle}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    return args


def lock_changed() -> bool:
    """Whether requirements.lock changed since the last build here (then the cached dependency layers of the old
    lock are ~6 GB of garbage)."""
    stamp = CACHE / "lock-sha256"
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    changed = not stamp.is_file() or stamp.read_text().strip() != digest
    stamp.write_text(digest + "\n")
    return changed


class DiskWatch:
    """The least free space on ``path``'s file system while the block runs, sampled every ``every`` seconds: what a
    build took at its peak (other writers on the machine count too)."""

    def __init__(self, path: Path, every: float = 2.0):
        self.path, self.every = path, every
        self.before = self.least = shutil.disk_usage(path).free
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.least = min(self.least, shutil.disk_usage(self.path).free)

    def __enter__(self) -> "DiskWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.least = min(self.least, shutil.disk_usage(self.path).free)

    @property
    def peak_use(self) -> int:
        return self.before - self.least


def free_gb(path: Path) -> float:
    return round(shutil.disk_usage(path).free / 1e9, 1)


@pytest.fixture(scope="session")
def image_tools() -> None:
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: {INSTALL_HINT}", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the image tests build with buildah (overlay storage, chroot isolation) and debootstrap: "
                    "run them as root", pytrace=False)


@pytest.fixture(scope="session")
def say(pytestconfig):
    """A line on the terminal, past pytest's capture: what a build that takes minutes is doing."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")

    def write(line: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[image] {line}")

    return write


@pytest.fixture(scope="session")
def test_base(image_tools, say) -> str:
    """localhost/salesfc-test-base:bookworm, built by scripts/build-test-base.sh unless it is already there."""
    existed = image_exists(BASE_IMAGE)
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "base.log"
    start = time.monotonic()
    code = run_logged([str(REPO / "scripts" / "build-test-base.sh")], log, what="test base image", say=say,
                      timeout=1200, env={**os.environ, **STORAGE_ENV})
    if code != 0:
        pytest.fail(f"scripts/build-test-base.sh exited {code} (full log: {log}):\n{log.read_text()[-6000:]}",
                    pytrace=False)
    METRICS["base_build_s"] = None if existed else round(time.monotonic() - start, 1)
    return BASE_IMAGE


@pytest.fixture(scope="session")
def trainer_image(test_base, say) -> str:
    """The trainer image, built once per session from image/Containerfile on the test base."""
    CACHE.mkdir(parents=True, exist_ok=True)
    if image_exists(IMAGE):  # the previous session's; its layers stay as the build cache
        buildah("rmi", "--force", IMAGE)
    # Containers in the tests' own storage are left over from a session that was killed (this session's come later):
    # removing them frees their layers' space; images stay, as the build cache.
    buildah("rm", "--all", check=False)
    if lock_changed():
        buildah("rmi", "--prune", check=False)
    storage = Path(STORAGE_ROOT)
    storage.mkdir(parents=True, exist_ok=True)
    cold = METRICS["cold_build"] = not cached_layers()
    if cold and shutil.disk_usage(storage).free / 1e9 < COLD_BUILD_GB:
        pytest.fail(f"the trainer image build needs about {COLD_BUILD_GB:.0f} GB free on {storage}'s file system "
                    f"(no cached layers: it installs the whole lock, ~7.6 GB, and buildah holds each step's container "
                    f"until the end); {free_gb(storage)} GB are free. Free some space, or leave the image tests out: "
                    f"make test ARGS=\"-m 'not image'\"", pytrace=False)
    log = CACHE / "build.log"
    command = [
        *BUILDAH, "bud", "--isolation", "chroot", "--pull=never", "--file", "image/Containerfile", "--tag", IMAGE,
        # A layer per instruction, as docker and podman build: each dependency group is committed on its own, and
        # a rerun with the same lock reuses them.
        "--layers",
        # A failed build's step containers are removed too (by default only a successful build's are).
        "--force-rm",
        "--build-arg", f"BASE_IMAGE={test_base}", "--build-arg", f"VERSION={VERSION}",
        # pip downloads inside the build, into the layer's own temporary files: no wheelhouse beside the build
        # (3 GB more disk at its peak), and a rerun with the same lock does not download at all (cached layers).
        *pip_build_args(),
        ".",
    ]
    start = time.monotonic()
    with DiskWatch(storage) as disk:
        code = run_logged(command, log, what="trainer image build", say=say, timeout=1800, cwd=REPO)
    METRICS["image_build_s"] = round(time.monotonic() - start, 1)
    METRICS["disk_free_before_build_gb"] = round(disk.before / 1e9, 1)
    METRICS["build_peak_disk_gb"] = round(disk.peak_use / 1e9, 1)
    if code != 0:
        tail = log.read_text()[-6000:]
        pytest.fail(f"buildah bud exited {code} (full log: {log}; {disk.before / 1e9:.1f} GB free on {storage}'s file "
                    f"system before the build, {free_gb(storage)} GB now, peak use {disk.peak_use / 1e9:.1f} GB):"
                    f"\n{tail}", pytrace=False)
    METRICS["image"] = IMAGE
    sizes = METRICS["layer_sizes"] = layer_sizes(IMAGE)
    METRICS["image_size_gb"] = round(sum(sizes) / 1e9, 2)
    METRICS["largest_layer_gb"] = round(max(sizes) / 1e9, 2)
    return IMAGE


@pytest.fixture(scope="session")
def container(trainer_image):
    """One working container of the image for all checks; removed at the end of the session. The image stays
    for the next tests and for a look by hand."""
    start = time.monotonic()
    name = buildah("from", "--pull=never", trainer_image).stdout.strip().splitlines()[-1]
    METRICS["container_create_s"] = round(time.monotonic() - start, 1)
    yield name
    buildah("rm", name, check=False)


# buildah's chroot isolation re-executes buildah from a sealed in-memory copy before the command starts; sealing it
# failed once with EBUSY (CI, 2026-12-06: "Close_Fd sealing memfd copy: Device or resource busy", the same command
# then ran fine three times). Nothing ran in the container, so the command is tried again.
REEXEC_FAILURE = "sealing memfd copy"
REEXEC_TRIES = 3


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
        for _ in range(REEXEC_TRIES):
            result = buildah(*args, container, "--", *command, timeout=timeout, check=False)
            if REEXEC_FAILURE not in result.stderr or result.stdout:
                break
        return result

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
def image_layer_sizes(trainer_image) -> list[int]:
    """The image's layers' sizes in bytes, base first (read once, when it was built)."""
    return METRICS["layer_sizes"]


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
        f"size {METRICS.get('image_size_gb', '?')} GB (largest layer {METRICS.get('largest_layer_gb', '?')} GB)",
        f"build {METRICS.get('image_build_s', '?')} s ({'no' if METRICS.get('cold_build') else 'with'} cached layers; "
        f"disk: {METRICS.get('build_peak_disk_gb', '?')} GB at its peak, "
        f"{METRICS.get('disk_free_before_build_gb', '?')} GB free before)",
        f"base {'reused' if base is None else f'{base} s'}",
        f"container {METRICS.get('container_create_s', '?')} s",
    ]
    if "demo_s" in METRICS:
        parts.append(f"demo {METRICS['demo_s']} s")
    terminalreporter.write_sep("-", "trainer image")
    terminalreporter.write_line(", ".join(parts) + f"  ({CACHE / 'metrics.json'})")
