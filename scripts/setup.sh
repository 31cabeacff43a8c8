#!/usr/bin/env bash
# Set up everything salesfc needs on this machine, idempotently: a Python venv (.venv) with the pinned
# dependencies and salesfc itself; with --test, also the test tools (pytest, PostgreSQL, chart tools, the test
# control plane, buildah).
# Safe to run again: each step is skipped when it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
WITH_TESTS=0
[ "${1:-}" = "--test" ] && WITH_TESTS=1

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root for: $* (install it yourself, or run as root)" >&2; return 1; fi
}

apt_install() {  # apt_install <command-or-path-that-proves-it-is-there> <package>...
  local probe=$1; shift
  if command -v "$probe" >/dev/null 2>&1 || [ -e "$probe" ]; then return 0; fi
  command -v apt-get >/dev/null || { echo "setup: please install: $*" >&2; return 1; }
  say "installing $* (apt)"
  as_root apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY' || { echo "setup: salesfc needs Python 3.10 or newer ($PYTHON is too old)" >&2; exit 1; }
import sys; sys.exit(sys.version_info < (3, 10))
PY
"$PYTHON" -c "import venv, ensurepip" 2>/dev/null || apt_install /nonexistent python3-venv

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when the pins change: the stamp records the lock files' hash.
locks=(image/requirements.lock)
[ $WITH_TESTS = 1 ] && locks+=(image/requirements-test.txt)
stamp="$VENV/.salesfc-$(cat "${locks[@]}" image/pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  say "installing Python dependencies into $VENV (torch is large: a few minutes the first time)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  args=()
  for lock in "${locks[@]}"; do args+=(-r "$lock"); done
  "$VENV/bin/python" -m pip install -q "${args[@]}"
  "$VENV/bin/python" -m pip install -q --no-deps -e image
  touch "$stamp"
fi

if [ $WITH_TESTS = 1 ]; then
  apt_install /usr/lib/postgresql postgresql        # integration tests start their own private server
  apt_install git git
  bash scripts/install-chart-tools.sh
  apt_install openssl openssl                       # the test control plane's service-account key
  apt_install java openjdk-17-jre-headless          # Spark (tests/integration/test_spark.py)
  bash scripts/build-control-plane.sh               # the cluster tests' control plane (10-22 min cold on 2 cores)
  bash scripts/install-image-tools.sh
fi
say "ready ($VENV)"
