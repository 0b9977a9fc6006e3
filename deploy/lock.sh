#!/usr/bin/env bash
# deploy/lock.sh — regenerate the locked installs from pyproject.toml, with hashes:
#   deploy/requirements.lock       runtime dependencies (./perg-cli, deploy/setup.sh, the image)
#   deploy/requirements-dev.lock   runtime + the dev extra (deploy/setup.sh --dev, CI)
#   deploy/llama-server.lock       the embedded model server's wheel and the gguf package that
#                                  re-encodes its model (XLLAMACPP, GGUF_PY in
#                                  deploy/llama-server.sh), installed by deploy/llama-server.sh
# Run it after changing [project] dependencies or the dev extra; commit both files.
# Deterministic: versions already pinned in a lock are kept (uv's preferences from the output
# file); only a new or changed requirement resolves afresh, to the newest version PyPI has that
# fits. Reaches only PyPI (uv itself is pip-installed from PyPI into $PERG_HOME/tools, once).
#   deploy/lock.sh             update the locks
#   deploy/lock.sh --upgrade   re-resolve every package to its newest fitting version
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PERG_HOME="${PERG_HOME:-$HOME/.cache/perg}"
UV_VERSION="0.13.8"
TOOL="$PERG_HOME/tools/uv-$UV_VERSION"
UPGRADE=()
case "${1:-}" in
    "") ;;
    --upgrade) UPGRADE=(--upgrade) ;;
    *) echo "lock.sh: unknown option '$1' (usage: deploy/lock.sh [--upgrade])" >&2; exit 2 ;;
esac

if [[ ! -x "$TOOL/bin/uv" ]]; then
    echo "lock.sh: installing uv $UV_VERSION from PyPI into $TOOL (~10 s, once)" >&2
    PYTHON="$(command -v python3.11 || command -v python3)"
    "$PYTHON" -m venv "$TOOL.tmp.$$"
    "$TOOL.tmp.$$/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
    rm -rf "$TOOL" && mv "$TOOL.tmp.$$" "$TOOL"  # bin/uv is a native binary: movable
fi

compile() {  # compile OUTPUT [UV ARGS]: one lock for Python 3.11+ on every platform
    local out="$1"
    shift
    (cd "$ROOT" && "$TOOL/bin/uv" pip compile --quiet --universal --python-version 3.11 \
        --generate-hashes --no-header --annotation-style line "${UPGRADE[@]}" "$@" \
        pyproject.toml -o "$out")
}
compile deploy/requirements-dev.lock --extra dev
# the runtime lock takes its versions from the dev lock, so both install the same runtime
compile deploy/requirements.lock --constraint deploy/requirements-dev.lock
pinned() { sed -n "s/^$1=\"\([^\"]*\)\".*/\1/p" "$ROOT/deploy/llama-server.sh"; }
printf 'xllamacpp==%s\ngguf==%s\n' "$(pinned XLLAMACPP)" "$(pinned GGUF_PY)" \
    | (cd "$ROOT" && "$TOOL/bin/uv" pip compile --quiet --universal --python-version 3.11 \
        --generate-hashes --no-header - -o deploy/llama-server.lock)
echo "lock.sh: wrote deploy/requirements.lock, deploy/requirements-dev.lock, deploy/llama-server.lock" >&2
