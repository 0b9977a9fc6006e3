#!/usr/bin/env bash
# deploy/kafka.sh — a single-node Apache Kafka 4.1 (KRaft, broker+controller in one JVM)
# on 127.0.0.1, without Docker and without a Kafka tarball: the broker's jars come from
# Maven Central via deploy/kafka/pom.xml and are cached in $PERG_HOME/kafka/libs.
#
#   deploy/kafka.sh start      start (or find running) broker; prints 127.0.0.1:PORT
#   deploy/kafka.sh start --secure  also a SASL_SSL listener (SCRAM-SHA-256/512 user "perg",
#                              a CA made at the first start with openssl); the settings a
#                              client needs go to $PERG_KAFKA_DIR/client.env as KEY=VALUE
#                              (PERG_KAFKA=..., PERG_KAFKA_*; the password as a file path).
#                              The PLAINTEXT listener stays for inter-broker traffic and the
#                              readiness probe, on loopback only.
#   deploy/kafka.sh stop       SIGTERM, wait, SIGKILL after PERG_KAFKA_STOP_TIMEOUT; ok if stopped
#   deploy/kafka.sh status     "running 127.0.0.1:PORT pid N" (exit 0) | "stopped" (exit 3)
#   deploy/kafka.sh bootstrap  prints 127.0.0.1:PORT of the running broker (exit 1 if none)
#   deploy/kafka.sh fetch      only download the jars
#
# Environment:
#   PERG_HOME                  tool cache (default ~/.cache/perg); jars in $PERG_HOME/kafka/libs
#   PERG_KAFKA_DIR             state dir: server.properties, data/, kafka.pid, kafka.log,
#                              bootstrap (default $PERG_HOME/kafka/run)
#   PERG_KAFKA_PORT            broker port (default: a free port)
#   PERG_KAFKA_CONTROLLER_PORT controller port (default: a free port)
#   PERG_KAFKA_HEAP            JVM heap options (default "-Xmx512m -Xms128m")
#   PERG_KAFKA_START_TIMEOUT   seconds to wait for the broker to answer (default 90)
#   PERG_KAFKA_STOP_TIMEOUT    seconds between SIGTERM and SIGKILL (default 30)
#   PERG_MAVEN_REPO            optional -Dmaven.repo.local for the jar download
#
# The state dir keeps the data between stop/start (storage is formatted once); delete the
# dir for a fresh broker. The quorum is static (controller.quorum.voters), so the ports may
# change between restarts.
#
# Measured on the 2-core dev VM (Debian 12, OpenJDK 17, Maven 3.8.7):
#   cold start, empty ~/.m2 (download 93 jars, 54 MB) + format + start:  ~72 s (~60 s of it Maven)
#   warm start (jars cached, fresh state dir: format + start):          ~11 s
#   restart of an existing state dir (no format):                       ~9 s
#   stop (SIGTERM -> exit):                                             ~2-3 s
set -euo pipefail

KAFKA_VERSION=4.1.0   # keep in sync with deploy/kafka/pom.xml and docker-compose.yml

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PERG_HOME="${PERG_HOME:-$HOME/.cache/perg}"
LIBS="$PERG_HOME/kafka/libs"
STATE="${PERG_KAFKA_DIR:-$PERG_HOME/kafka/run}"
PIDFILE="$STATE/kafka.pid"
LOGFILE="$STATE/kafka.log"
BOOTFILE="$STATE/bootstrap"
PROPS="$STATE/server.properties"
START_TIMEOUT="${PERG_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${PERG_KAFKA_STOP_TIMEOUT:-30}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
PYTHON="$(command -v python3 || command -v python)"

die() { echo "kafka.sh: $*" >&2; exit 1; }
log() { echo "kafka.sh: $*" >&2; }
ADDRESSFILE="$BOOTFILE"
# shellcheck source=deploy/lib/daemon.sh
source "$HERE/lib/daemon.sh"

# --- jars ---------------------------------------------------------------------------------
fetch() {
    if [[ -f "$LIBS/.complete-$KAFKA_VERSION" ]]; then return 0; fi
    command -v mvn >/dev/null || die "mvn not found (needed once to fetch the Kafka jars)"
    mkdir -p "$PERG_HOME/kafka"
    (
        flock 9
        [[ -f "$LIBS/.complete-$KAFKA_VERSION" ]] && exit 0
        log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS (one time, ~60 s)"
        local tmp="$LIBS.tmp.$$"
        rm -rf "$tmp"
        local args=(-q -B -f "$HERE/kafka/pom.xml" dependency:copy-dependencies
                    "-DoutputDirectory=$tmp")
        [[ -n "${PERG_MAVEN_REPO:-}" ]] && args+=("-Dmaven.repo.local=$PERG_MAVEN_REPO")
        mvn "${args[@]}" >&2 || { rm -rf "$tmp"; die "maven could not fetch the Kafka jars"; }
        ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 \
            || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after download"; }
        rm -rf "$LIBS"
        mv "$tmp" "$LIBS"
        touch "$LIBS/.complete-$KAFKA_VERSION"
    ) 9>"$PERG_HOME/kafka/.fetch.lock"
}

# --- process bookkeeping --------------------------------------------------------------------
running_pid() { daemon_pid "kafka.Kafka $PROPS"; }  # our broker, with our properties

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

java_run() {  # java_run MAINCLASS ARGS... (foreground)
    # shellcheck disable=SC2086
    "$JAVA" ${PERG_KAFKA_HEAP:--Xmx512m -Xms128m} -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$HERE/log4j2.yaml" -Dkafka.logs.dir="$STATE/logs" \
        -cp "$LIBS/*" "$@"
}

# Ask the broker over the Kafka protocol (stdlib only): ApiVersions, then a Metadata request
# that must list at least one broker, i.e. the broker is registered and unfenced.
probe() {  # probe HOST PORT -> exit 0 when ready
    "$PYTHON" - "$1" "$2" <<'PY'
import socket, struct, sys

host, port = sys.argv[1], int(sys.argv[2])

def call(sock, key, version, body, corr):
    client = b"perg-probe"
    hdr = struct.pack(">hhih", key, version, corr, len(client)) + client
    msg = hdr + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", recv(sock, 4))[0]
    data = recv(sock, size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise SystemExit(2)
    return data[4:]

def recv(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit(2)
        buf += chunk
    return buf

try:
    with socket.create_connection((host, port), timeout=3) as s:
        s.settimeout(5)
        r = call(s, 18, 0, b"", 1)                      # ApiVersions v0
        err, n = struct.unpack(">hi", r[:6])
        if err:
            raise SystemExit(2)
        ranges = {}
        for i in range(n):
            k, lo, hi = struct.unpack(">hhh", r[6 + 6 * i: 12 + 6 * i])
            ranges[k] = (lo, hi)
        lo, hi = ranges.get(3, (99, -1))
        v = max(lo, 4)                                  # Metadata, non-flexible (<= 8)
        if v > min(hi, 8):
            raise SystemExit(0)                         # can't speak it; ApiVersions answered
        body = struct.pack(">i", 0)                     # no topics
        body += b"\x00"                                 # allow_auto_topic_creation
        if v >= 8:
            body += b"\x00\x00"
        r = call(s, 3, v, body, 2)
        off = 4 if v >= 3 else 0                        # throttle_time_ms
        (brokers,) = struct.unpack(">i", r[off:off + 4])
        raise SystemExit(0 if brokers > 0 else 2)
except OSError:
    raise SystemExit(2)
PY
}

# --- TLS and SCRAM for --secure ----------------------------------------------------------
# $STATE/tls: ca.pem (clients trust it), broker.p12 (the broker's key + cert for 127.0.0.1 and
# localhost, signed by the CA); $STATE/secrets: perg.password (the SCRAM user's), tls.password.
make_secrets() {
    local tls="$STATE/tls" secrets="$STATE/secrets"
    [[ -f "$tls/broker.p12" && -f "$secrets/perg.password" ]] && return 0
    command -v openssl >/dev/null || die "openssl not found (needed for --secure)"
    mkdir -p "$tls" "$secrets"
    chmod 700 "$secrets"
    (umask 077
     openssl rand -hex 24 >"$secrets/perg.password"
     openssl rand -hex 24 >"$secrets/tls.password")
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=perg-kafka-ca" \
        -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null || die "openssl: CA failed"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$tls/broker.key" -out "$tls/broker.csr" 2>/dev/null || die "openssl: CSR failed"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tls/san.ext"
    openssl x509 -req -in "$tls/broker.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
        -CAcreateserial -days 3650 -extfile "$tls/san.ext" -out "$tls/broker.pem" 2>/dev/null \
        || die "openssl: signing the broker certificate failed"
    openssl pkcs12 -export -in "$tls/broker.pem" -inkey "$tls/broker.key" \
        -certfile "$tls/ca.pem" -out "$tls/broker.p12" \
        -passout "file:$secrets/tls.password" || die "openssl: keystore failed"
}

write_client_env() {  # write_client_env SASL_PORT
    cat >"$STATE/client.env" <<EOF
PERG_KAFKA=127.0.0.1:$1
PERG_KAFKA_SECURITY_PROTOCOL=SASL_SSL
PERG_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
PERG_KAFKA_SASL_USERNAME=perg
PERG_KAFKA_SASL_PASSWORD_FILE=$STATE/secrets/perg.password
PERG_KAFKA_SSL_CAFILE=$STATE/tls/ca.pem
EOF
}

# --- commands ----------------------------------------------------------------------------
cmd_start() {
    local secure=0
    [[ "${1:-}" == "--secure" || -f "$STATE/tls/broker.p12" ]] && secure=1
    mkdir -p "$STATE"
    exec 8>"$STATE/.lock"
    flock 8
    local pid
    if pid="$(running_pid)"; then
        if [[ -f "$BOOTFILE" ]] && probe 127.0.0.1 "$(cut -d: -f2 "$BOOTFILE")"; then
            cat "$BOOTFILE"
            return 0
        fi
        log "broker pid $pid is running but not answering; waiting for it"
    else
        command -v "$JAVA" >/dev/null || die "java not found (need Java 17+)"
        fetch
        local port="${PERG_KAFKA_PORT:-$(free_port)}"
        local cport="${PERG_KAFKA_CONTROLLER_PORT:-$(free_port)}"
        while [[ "$cport" == "$port" ]]; do cport="$(free_port)"; done
        mkdir -p "$STATE/data" "$STATE/logs"
        local listeners="PLAINTEXT://127.0.0.1:$port" advertised="PLAINTEXT://127.0.0.1:$port"
        local scram=()
        if (( secure )); then
            make_secrets
            local sport="${PERG_KAFKA_SASL_PORT:-$(free_port)}"
            listeners+=",SASL_SSL://127.0.0.1:$sport"
            advertised+=",SASL_SSL://127.0.0.1:$sport"
            local pw
            pw="$(cat "$STATE/secrets/perg.password")"
            scram=(--add-scram "SCRAM-SHA-512=[name=perg,password=$pw]"
                   --add-scram "SCRAM-SHA-256=[name=perg,password=$pw]")
            write_client_env "$sport"
        fi
        cat >"$PROPS" <<EOF
# written by deploy/kafka.sh — single node KRaft, loopback only
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$listeners,CONTROLLER://127.0.0.1:$cport
advertised.listeners=$advertised
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$STATE/data
num.partitions=6
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.segment.bytes=67108864
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
        if (( secure )); then
            cat >>"$PROPS" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$STATE/tls/broker.p12
ssl.keystore.password=$(cat "$STATE/secrets/tls.password")
ssl.client.auth=none
EOF
            chmod 600 "$PROPS"
        fi
        if [[ ! -f "$STATE/data/meta.properties" ]]; then
            [[ -f "$STATE/cluster.id" ]] || "$PYTHON" -c \
                'import base64,uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))' \
                >"$STATE/cluster.id"
            # "=": an id may start with "-", which argparse would take for an option
            java_run kafka.tools.StorageTool format --cluster-id="$(cat "$STATE/cluster.id")" \
                -c "$PROPS" --ignore-formatted "${scram[@]}" >>"$LOGFILE" 2>&1 \
                || { tail -n 30 "$LOGFILE" >&2; die "formatting the storage in $STATE/data failed"; }
        fi
        echo "127.0.0.1:$port" >"$BOOTFILE"
        # setsid: own session, so the broker outlives this shell and ^C in the caller
        setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
            "$JAVA" ${PERG_KAFKA_HEAP:--Xmx512m -Xms128m} -XX:+UseG1GC -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$HERE/log4j2.yaml" -Dkafka.logs.dir="$STATE/logs" \
            -cp "$LIBS/*" kafka.Kafka "$PROPS" >>"$LOGFILE" 2>&1 </dev/null 8>&- &
        local waited=0
        while [[ ! -s "$PIDFILE" ]] && (( waited < 50 )); do sleep 0.1; waited=$((waited + 1)); done
        pid="$(cat "$PIDFILE")"
    fi
    local port deadline
    port="$(cut -d: -f2 "$BOOTFILE")"
    deadline=$((SECONDS + START_TIMEOUT))
    until probe 127.0.0.1 "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "broker exited during startup; last lines of $LOGFILE:"
            tail -n 40 "$LOGFILE" >&2
            rm -f "$PIDFILE"
            exit 1
        fi
        if (( SECONDS >= deadline )); then
            log "broker (pid $pid) did not answer on 127.0.0.1:$port within ${START_TIMEOUT}s;" \
                "last lines of $LOGFILE:"
            tail -n 40 "$LOGFILE" >&2
            exit 1
        fi
        sleep 0.25
    done
    cat "$BOOTFILE"
}



cmd_bootstrap() {
    running_pid >/dev/null || die "no broker running for state dir $STATE (run: $0 start)"
    cat "$BOOTFILE"
}

case "${1:-}" in
    start) cmd_start "${2:-}" ;;
    stop) daemon_stop "kafka.Kafka $PROPS" "$STOP_TIMEOUT" ;;
    status) daemon_status "kafka.Kafka $PROPS" ;;
    bootstrap) cmd_bootstrap ;;
    fetch) fetch; echo "$LIBS" ;;
    *) echo "usage: $0 start [--secure]|stop|status|bootstrap|fetch" >&2; exit 2 ;;
esac
