#!/usr/bin/env bash
# Build the small local base image the image tests build image/Containerfile on, without any registry:
#
#   localhost/salesfc-test-base:bookworm   Debian 12 (debootstrap --variant=minbase) + python3, python3-venv,
#                                          ca-certificates. No torch: the trainer build installs the pinned one.
#
# The image goes into the image tests' own buildah storage (overlay driver; SALESFC_TEST_STORAGE_ROOT and
# SALESFC_TEST_STORAGE_RUNROOT, which tests/image/conftest.py sets). If it is already there, nothing is rebuilt
# (pass --force to rebuild). Prints how long the build took. Needs root, buildah and debootstrap
# (scripts/install-image-tools.sh installs them) and Debian's mirror (MIRROR, default deb.debian.org).
#
# Usage: scripts/build-test-base.sh [--force]
set -euo pipefail

IMAGE="${TEST_BASE_IMAGE:-localhost/salesfc-test-base:bookworm}"
SUITE=bookworm
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
PACKAGES=python3,python3-venv,ca-certificates
BUILDAH=(buildah --storage-driver overlay
    --root "${SALESFC_TEST_STORAGE_ROOT:-/var/lib/containers/salesfc-test}"
    --runroot "${SALESFC_TEST_STORAGE_RUNROOT:-/run/containers/salesfc-test}")

log() { printf '[build-test-base] %s\n' "$*" >&2; }
die() { printf '[build-test-base] error: %s\n' "$*" >&2; exit 1; }

force=0
case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    *) die "unknown argument '$1' (usage: $0 [--force])" ;;
esac

((EUID == 0)) || die "debootstrap needs root: run this as root"
for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || die "'$tool' is not installed: run scripts/install-image-tools.sh"
done

if ((!force)) && "${BUILDAH[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE already exists (--force rebuilds it)"
    exit 0
fi

start=$SECONDS
container="$("${BUILDAH[@]}" from scratch)"
trap '"${BUILDAH[@]}" rm "$container" >/dev/null 2>&1 || true' EXIT
rootfs="$("${BUILDAH[@]}" mount "$container")"

log "debootstrap --variant=minbase $SUITE ($PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >/dev/null \
    || die "debootstrap failed (see $rootfs/debootstrap/debootstrap.log)"
# What an image does not need: package lists (apt-get update fetches them again), caches, docs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
chroot "$rootfs" python3 -c 'import venv, ensurepip' || die "python3 (with venv) does not run in the new root file system"

"${BUILDAH[@]}" umount "$container" >/dev/null
"${BUILDAH[@]}" config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd /bin/bash \
    --label "org.opencontainers.image.title=salesfc test base" \
    --label "org.opencontainers.image.description=Debian $SUITE minbase with python3 for the salesfc image tests" \
    "$container"
"${BUILDAH[@]}" commit --quiet --rm "$container" "$IMAGE" >/dev/null
trap - EXIT

log "built $IMAGE in $((SECONDS - start)) s ($("${BUILDAH[@]}" images --format '{{.Size}}' "$IMAGE"))"
