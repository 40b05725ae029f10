#!/usr/bin/env bash
# Builds the Docker tier's base image without pulling from any registry.
#
# For machines that cannot reach Docker Hub (no `docker pull python:3.11-slim`),
# often behind a TLS-intercepting proxy: Debian bookworm is bootstrapped with
# debootstrap from the mirror the host's apt already uses, gets python3, venv,
# pip, ca-certificates and git, plus the host's CA bundle so pip inside image
# builds trusts the proxy, and is imported with `docker import`.
#
#   infra/docker/build-base-image.sh [IMAGE]    # default cs-base:bookworm
#   CS_BASE_IMAGE=cs-base:bookworm                     # then publish on the docker tier with it
#
# Idempotent: does nothing when IMAGE exists (set FORCE=1 to rebuild).
set -euo pipefail

IMAGE="${1:-${CS_BASE_IMAGE:-cs-base:bookworm}}"
SUITE="${SUITE:-bookworm}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
PACKAGES="python3,python3-venv,python3-pip,ca-certificates,git"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE exists (FORCE=1 to rebuild)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root: run with sudo" >&2; exit 1; }

# The first Debian mirror the host's apt is configured with (deb822 or one-line format).
mirror() {
  local uri
  uri=$(grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
  [ -n "$uri" ] || uri=$(grep -hE '^\s*deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

MIRROR="$(mirror)"
ROOT="$(mktemp -d /tmp/cs-base-rootfs.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT

echo "debootstrap $SUITE from $MIRROR into $ROOT"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR"

# The host's CA bundle (a proxy's root CA included) replaces the image's, and
# is what pip, requests and git trust inside every build on this base.
if [ -f "$CA_BUNDLE" ]; then
  cp "$CA_BUNDLE" "$ROOT/etc/ssl/certs/ca-certificates.crt"
fi
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" > "$ROOT/etc/apt/sources.list"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*

echo "docker import → $IMAGE"
tar -C "$ROOT" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["/bin/bash"]' \
  - "$IMAGE"
docker run --rm "$IMAGE" python3 -c 'import sys, venv, ssl; print("python", sys.version.split()[0], "ok")'
