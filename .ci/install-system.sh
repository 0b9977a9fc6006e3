#!/usr/bin/env bash
# .ci/install-system.sh — Debian packages the test suite needs, installed only when missing:
#   docker-compose   Debian's compose 1.29 (python), for the offline `docker-compose config`
#                    check in tests/test_compose.py (no Docker engine needed)
#   chromium, chromium-driver   browser for the dashboard tests
#   libgomp1         OpenMP runtime of the embedded model server (the xllamacpp wheel)
# (tests/test_compose_up.py's helper, deploy/offline-images.sh, installs docker.io and
# debootstrap itself when the machine has no Docker engine)
# Idempotent and quiet; must run as root (or with sudo available).
set -euo pipefail

want=(docker-compose chromium chromium-driver libgomp1)
missing=()
for pkg in "${want[@]}"; do
    if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)" != "installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install-system: all present (${want[*]})"
    exit 0
fi

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null || { echo "install-system: need root for apt-get" >&2; exit 1; }
    SUDO="sudo"
fi

echo "install-system: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# refresh the package lists only when they are missing or older than a day
if [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mmin -1440 2>/dev/null | head -n1)" ]]; then
    $SUDO apt-get update -qq
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-system: done"
