#!/usr/bin/env bash
# deploy/setup.sh [--dev] — create ./.venv and install the project into it (with the test
# tools for --dev): the dependencies exactly as locked, with hashes (deploy/requirements.lock,
# deploy/requirements-dev.lock for --dev; deploy/lock.sh regenerates them), then the project
# itself without dependencies. Idempotent: does nothing when neither pyproject.toml nor the
# lock has changed since.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS=""
LOCK="$ROOT/deploy/requirements.lock"
if [[ "${1:-}" == "--dev" ]]; then
    EXTRAS="[dev]"
    LOCK="$ROOT/deploy/requirements-dev.lock"
fi
STAMP="$VENV/.perg-installed$EXTRAS"
DEV_STAMP="$VENV/.perg-installed[dev]"  # the dev install holds the runtime one
DEV_LOCK="$ROOT/deploy/requirements-dev.lock"

installed() {  # installed STAMP LOCK: the install STAMP records is newer than its inputs
    [[ -f "$1" && "$1" -nt "$ROOT/pyproject.toml" && "$1" -nt "$2" ]]
}
if { installed "$STAMP" "$LOCK" || installed "$DEV_STAMP" "$DEV_LOCK"; } \
    && "$VENV/bin/python" -c 'import perg' 2>/dev/null; then
    exit 0
fi
PYTHON="$(command -v python3.11 || command -v python3)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "setup.sh: Python >= 3.11 is required ($PYTHON is older)" >&2; exit 1; }
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
echo "setup.sh: installing perg-stream$EXTRAS into $VENV from ${LOCK#"$ROOT/"} (~30-60 s the first time)" >&2
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
"${PIP[@]}" --require-hashes -r "$LOCK" >&2
"${PIP[@]}" --no-deps -e "$ROOT" >&2
touch "$STAMP"
