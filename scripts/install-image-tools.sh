#!/usr/bin/env bash
# Install what the image tests (tests/image, pytest -m image) need: Debian packages, so this runs as root (or sudo).
#
#   buildah       builds image/Containerfile and runs commands in the result (no Docker engine, no daemon:
#                 `buildah bud --isolation chroot --storage-driver overlay --layers`, the way the tests call it)
#   debootstrap   builds the tests' local base image (scripts/build-test-base.sh): no registry is needed
#
# Running it again installs nothing that is already there. Debian/Ubuntu only (apt-get).
#
# Usage: scripts/install-image-tools.sh          (as root)
set -euo pipefail

log() { printf '[install-image-tools] %s\n' "$*" >&2; }
die() { printf '[install-image-tools] error: %s\n' "$*" >&2; exit 1; }

# command -> Debian package that provides it
declare -A PACKAGE_FOR=([buildah]=buildah [debootstrap]=debootstrap)

missing=()
for tool in "${!PACKAGE_FOR[@]}"; do
    if command -v "$tool" >/dev/null 2>&1; then
        log "$tool already installed ($(command -v "$tool"))"
    else
        missing+=("${PACKAGE_FOR[$tool]}")
    fi
done

if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "no apt-get here: install ${missing[*]} with this system's package manager"
    sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "installing ${missing[*]} needs root: run this script as root"
        sudo=(sudo)
    fi
    log "apt-get install ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# buildah needs a policy and a registries file to run at all; the Debian package brings them (containers-common),
# a hand-installed buildah may not.
[[ -f /etc/containers/policy.json ]] || die "/etc/containers/policy.json is missing: apt-get install containers-common"

log "done: $(buildah --version), debootstrap $(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?')"
