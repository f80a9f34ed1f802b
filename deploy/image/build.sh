#!/usr/bin/env bash
# Build eodeploy:0.1.0 without a Docker daemon and without pulling anything (as root, Debian's
# buildah/podman/debootstrap): a Debian bookworm base from debootstrap, the Python wheels built on
# this host (containers here cannot reach PyPI), then the Dockerfile with buildah.
#   deploy/image/build.sh [--base-only]
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=localhost/debian-py:bookworm-slim
if ! podman image exists "$BASE"; then
  rootfs=$(mktemp -d)
  # python3 only: the Dockerfile's build stage adds python3-venv (pip's wheels) and binutils itself.
  debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$rootfs" \
    http://deb.debian.org/debian
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/{doc,locale,man}/*
  tar -C "$rootfs" -c . | podman import - "$BASE"
  rm -rf "$rootfs"
fi
[ "${1:-}" = "--base-only" ] && exit 0
# Wheels for the image's Python (Debian's 3.11.2: redis then also wants async-timeout).
PY=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl
"$PY" -m pip wheel -q -w .whl ".[serve,postgres,convert]" async-timeout "setuptools>=69" wheel
# The dashboard's front-end files, fetched here like the wheels (as `make install` does; a no-op
# when they are in place): the build stage only checks them, since containers here do not trust
# this network's TLS interception for the npm registry.
PYTHONPATH=src "$PY" -m eodeploy.web.assets
buildah bud --isolation chroot --network host --format docker --build-arg BASE="$BASE" --build-arg PIP_NO_INDEX=1 \
  -t localhost/eodeploy:0.1.0 -t localhost/eodeploy:latest .
