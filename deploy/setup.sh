#!/usr/bin/env bash
# deploy/setup.sh [--dev] — create ./.venv and install the project into it (with the test
# tools for --dev). Idempotent: does nothing when pyproject.toml has not changed since.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS=""
[[ "${1:-}" == "--dev" ]] && EXTRAS="[dev]"
STAMP="$VENV/.perg-installed$EXTRAS"

if [[ -f "$STAMP" && "$STAMP" -nt "$ROOT/pyproject.toml" ]] && "$VENV/bin/python" -c 'import perg' 2>/dev/null; then
    exit 0
fi
PYTHON="$(command -v python3.11 || command -v python3)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "setup.sh: Python >= 3.11 is required ($PYTHON is older)" >&2; exit 1; }
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
echo "setup.sh: installing perg-stream$EXTRAS into $VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$ROOT$EXTRAS" >&2
touch "$STAMP"
