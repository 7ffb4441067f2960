#!/usr/bin/env bash
# Build a Debian bookworm base image without a registry: debootstrap from the apt mirror this
# machine already uses, then `docker import`. For hosts that cannot pull python:3.11-slim-bookworm.
#   docker/local-base.sh [IMAGE]      (default ssl-pipeline/base:bookworm; no-op when it exists)
set -euo pipefail
image="${1:-ssl-pipeline/base:bookworm}"
if docker image inspect "$image" > /dev/null 2>&1; then
    echo "$image exists"
    exit 0
fi
command -v debootstrap > /dev/null || apt-get install -y -qq debootstrap
mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
    | grep -oE 'https?://[^ ]+' | head -n1 || true)
mirror="${mirror:-http://deb.debian.org/debian}"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" > "$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
# the host's deb822 list also carries bookworm-updates and security
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
    rm -f "$root/etc/apt/sources.list"
fi
tar -C "$root" -c . | docker import - "$image"
echo "built $image from $mirror"
