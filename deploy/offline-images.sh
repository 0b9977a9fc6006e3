#!/usr/bin/env bash
# deploy/offline-images.sh — run docker-compose.yml on a machine that reaches package registries
# but no image registry: start a Docker engine if none runs, and build local stand-ins for the
# official base images the project's files name, from the package registries, tagged as those
# names (each labelled org.perg.stand-in):
#   debian:bookworm-slim   debootstrap (minbase) from this machine's Debian mirror + docker import
#   python:3.11-slim       Debian bookworm's python3 (3.11) on that base (deploy/offline/python.Dockerfile)
#   apache/kafka:4.1.0     Debian's OpenJDK 17 + the Kafka jars of deploy/kafka/pom.xml from Maven
#                          Central (deploy/offline/kafka.Dockerfile)
# An image already present under its name (a stand-in of an earlier run, or the official image)
# is kept: the build happens once per machine (~4 min on 2 cores). docker-compose.yml itself is
# unchanged and still names the official images.
#
#   deploy/offline-images.sh engine       start dockerd (installing Debian's docker.io if needed)
#                                         unless an engine answers; prints "started PID" or "running"
#   deploy/offline-images.sh engine-stop  stop the dockerd that `engine` started (no-op otherwise)
#   deploy/offline-images.sh bases        engine + the three stand-ins where missing
#   deploy/offline-images.sh docker       prints the docker client that matches the engine
#                                         (Debian's, which builds with BuildKit without buildx)
#
# Environment: PERG_HOME (default ~/.cache/perg; Kafka jars, dockerd state), PERG_DEBIAN_MIRROR
# (default: the first deb.debian.org-style URI in /etc/apt/sources.list*).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PERG_HOME="${PERG_HOME:-$HOME/.cache/perg}"
STATE="$PERG_HOME/dockerd"
PIDFILE="$STATE/dockerd.pid"
KAFKA_VERSION=4.1.0 # keep in sync with deploy/kafka.sh and docker-compose.yml

log() { echo "offline-images.sh: $*" >&2; }
die() { echo "offline-images.sh: $*" >&2; exit 1; }
SUDO=""
[[ "$(id -u)" == 0 ]] || SUDO="sudo"

docker_client() {  # Debian's client (docker.io) speaks BuildKit to its engine without buildx
    if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; else command -v docker; fi
}

engine_up() { "$(docker_client)" info >/dev/null 2>&1; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mmin -1440 2>/dev/null | head -n1)" ]]; then
        $SUDO apt-get update -qq
    fi
    $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

cmd_engine() {
    if command -v docker >/dev/null && engine_up; then
        echo running
        return 0
    fi
    if ! command -v dockerd >/dev/null; then
        log "installing Debian's docker.io (Docker engine; ~30 s)"
        apt_install docker.io
    fi
    mkdir -p "$STATE"
    log "starting dockerd (log $STATE/dockerd.log)"
    $SUDO setsid dockerd --pidfile "$PIDFILE" >>"$STATE/dockerd.log" 2>&1 </dev/null &
    local deadline=$((SECONDS + 60))
    until engine_up; do
        (( SECONDS < deadline )) || { tail -n 20 "$STATE/dockerd.log" >&2; die "dockerd did not answer within 60 s"; }
        sleep 0.5
    done
    echo "started $(cat "$PIDFILE")"
}

cmd_engine_stop() {
    [[ -f "$PIDFILE" ]] || return 0
    local pid
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null && grep -qF dockerd "/proc/$pid/cmdline"; then
        log "stopping dockerd (pid $pid)"
        $SUDO kill -TERM "$pid"
        local deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.5; done
    fi
    rm -f "$PIDFILE"
}

have_image() { "$(docker_client)" image inspect "$1" >/dev/null 2>&1; }

debian_mirror() {
    if [[ -n "${PERG_DEBIAN_MIRROR:-}" ]]; then echo "$PERG_DEBIAN_MIRROR"; return; fi
    local uri
    uri="$(grep -rhoE '(URIs:|^deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -oE 'https?://[^ ]+' | head -n1 || true)"
    echo "${uri:-http://deb.debian.org/debian}"
}

build_debian() {
    command -v debootstrap >/dev/null || { log "installing debootstrap (~5 s)"; apt_install debootstrap; }
    local mirror root
    mirror="$(debian_mirror)"
    root="$(mktemp -d "${TMPDIR:-/tmp}/perg-debootstrap.XXXXXX")"
    # shellcheck disable=SC2064
    trap "$SUDO rm -rf '$root'" RETURN
    log "building debian:bookworm-slim: debootstrap --variant=minbase bookworm from $mirror (~40 s)"
    $SUDO debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
        || { tail -n 20 "$root.log" >&2; die "debootstrap failed (log $root.log)"; }
    rm -f "$root.log"
    $SUDO rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    $SUDO tar -C "$root" -c . | "$(docker_client)" import \
        -c 'CMD ["bash"]' -c 'LABEL org.perg.stand-in="debian:bookworm-slim from debootstrap (deploy/offline-images.sh)"' \
        - debian:bookworm-slim >/dev/null
}

build_from() {  # build_from TAG DOCKERFILE CONTEXT
    DOCKER_BUILDKIT=1 "$(docker_client)" build -q -t "$1" -f "$2" "$3" >/dev/null
}

build_python() {
    local ctx
    ctx="$(mktemp -d "${TMPDIR:-/tmp}/perg-python-image.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$ctx'" RETURN
    mkdir -p "$ctx/ca"
    cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
    log "building python:3.11-slim from Debian's python3 on debian:bookworm-slim (~40 s)"
    build_from python:3.11-slim "$HERE/offline/python.Dockerfile" "$ctx"
}

build_kafka() {
    local ctx libs
    libs="$("$HERE/kafka.sh" fetch)" # prints where the jars are
    ctx="$(mktemp -d "${TMPDIR:-/tmp}/perg-kafka-image.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$ctx'" RETURN
    cp -r "$libs" "$ctx/libs"
    cp "$HERE/log4j2.yaml" "$HERE/offline/kafka-run.sh" "$HERE/offline/kafka-broker-api-versions.sh" "$ctx/"
    log "building apache/kafka:$KAFKA_VERSION from Debian's OpenJDK 17 + Maven Central jars (~90 s)"
    build_from "apache/kafka:$KAFKA_VERSION" "$HERE/offline/kafka.Dockerfile" "$ctx"
}

cmd_bases() {
    cmd_engine >/dev/null
    local tag
    for tag in debian:bookworm-slim python:3.11-slim "apache/kafka:$KAFKA_VERSION"; do
        if have_image "$tag"; then
            log "$tag present: kept ($("$(docker_client)" image inspect -f '{{with .Config.Labels}}{{index . "org.perg.stand-in"}}{{end}}' "$tag"))"
            continue
        fi
        log "no image registry here: building a local stand-in for $tag"
        case "$tag" in
            debian:*) build_debian ;;
            python:*) build_python ;;
            apache/kafka:*) build_kafka ;;
        esac
    done
}

case "${1:-}" in
    engine) cmd_engine ;;
    engine-stop) cmd_engine_stop ;;
    bases) cmd_bases ;;
    docker) docker_client ;;
    *) echo "usage: $0 engine|engine-stop|bases|docker" >&2; exit 2 ;;
esac
