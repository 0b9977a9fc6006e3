#!/usr/bin/env bash
# deploy/test.sh [PYTEST ARGS] — the test suite, as CI runs it: installs what is missing
# (system packages when run as root, the project with its test tools), runs lint, type checks
# and pytest. Tests start the Kafka broker, model servers and workers they need (deploy/) and
# stop them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    bash .ci/install-system.sh
fi
deploy/setup.sh --dev
.venv/bin/ruff check --no-cache .
.venv/bin/ruff format --no-cache --check .
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
