#!/usr/bin/env bash
# deploy/test.sh [--fast] [PYTEST ARGS] — the test suite, as CI runs it: installs what is
# missing (system packages when run as root, the project with its test tools), runs lint, type
# checks and pytest. Tests start the Kafka broker, model servers and workers they need
# (deploy/) and stop them; the chaos suite (marker `chaos`) is part of the full run.
#
#   --fast   no broker, no model, no end-to-end runs: lint, types and the unit tests
#            (pytest -m "not kafka and not slow and not chaos and not compose"), about a minute.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FAST=0
if [[ "${1:-}" == "--fast" ]]; then
    FAST=1
    shift
fi
if [[ "$FAST" == 0 && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    bash .ci/install-system.sh
fi
deploy/setup.sh --dev
.venv/bin/ruff check --no-cache .
.venv/bin/ruff format --no-cache --check .
.venv/bin/mypy
if [[ "$FAST" == 1 ]]; then
    exec .venv/bin/pytest -q -m "not kafka and not slow and not chaos and not compose" "$@"
fi
exec .venv/bin/pytest -q "$@"
