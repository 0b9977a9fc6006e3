# deploy/lib/daemon.sh — pid-file handling shared by kafka.sh and llama-server.sh (sourced).
# The caller defines: STATE (state dir), PIDFILE, ADDRESSFILE (what `status` prints), log().

# daemon_pid PATTERN: prints the pid of our live daemon; PATTERN must be in its command line
# (guards against pid reuse).
daemon_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$1" || return 1
    echo "$pid"
}

# wait_or_kill PID DEADLINE TIMEOUT_S: wait for PID (already sent SIGTERM) to end; SIGKILL it
# once $SECONDS reaches DEADLINE (TIMEOUT_S is only for the log line).
wait_or_kill() {
    while kill -0 "$1" 2>/dev/null; do
        if (( SECONDS >= $2 )); then
            log "pid $1 still alive after ${3}s; SIGKILL"
            kill -KILL "$1" 2>/dev/null || true
            sleep 0.2
            return
        fi
        sleep 0.1
    done
}

# daemon_stop PATTERN TIMEOUT_S: SIGTERM, wait, SIGKILL after the timeout; ok when stopped.
daemon_stop() {
    mkdir -p "$STATE"
    exec 8>"$STATE/.lock"
    flock 8
    local pid
    if ! pid="$(daemon_pid "$1")"; then
        rm -f "$PIDFILE"
        log "not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait_or_kill "$pid" $((SECONDS + $2)) "$2"
    rm -f "$PIDFILE"
    log "stopped (pid $pid)"
}

# daemon_status PATTERN: "running ADDRESS pid N" (exit 0) or "stopped" (exit 3).
daemon_status() {
    local pid
    if pid="$(daemon_pid "$1")"; then
        echo "running $(cat "$ADDRESSFILE" 2>/dev/null) pid $pid"
    else
        echo "stopped"
        return 3
    fi
}
