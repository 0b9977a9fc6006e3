#!/usr/bin/env bash
# deploy/kafka.sh — Apache Kafka 4.1 (KRaft) on 127.0.0.1, without Docker and without a Kafka
# tarball: the broker's jars come from Maven Central via deploy/kafka/pom.xml and are cached in
# $PERG_HOME/kafka/libs. One node (broker+controller in one JVM) or a cluster of N such nodes.
#
#   deploy/kafka.sh start      start (or find running) broker; prints 127.0.0.1:PORT
#   deploy/kafka.sh start --brokers 3
#                              a three-node cluster (every node broker+controller, a static
#                              controller quorum of all three, node ids 1..3, free ports chosen
#                              at the first start and kept, heaps of PERG_KAFKA_HEAP each);
#                              topics default to replication 3, min.insync.replicas 2. Prints
#                              the PLAINTEXT bootstrap list. Run again, it starts the nodes that
#                              are not running (a killed one comes back on its ports).
#   deploy/kafka.sh start --secure  also a SASL_SSL listener (SCRAM-SHA-256/512 user "perg",
#                              a CA made at the first start with openssl); the settings a
#                              client needs go to $PERG_KAFKA_DIR/client.env as KEY=VALUE
#                              (PERG_KAFKA=..., PERG_KAFKA_*; the password as a file path).
#                              And an SSL listener that requires a client certificate (mutual
#                              TLS, a client certificate made with the CA): client-mtls.env.
#                              The PLAINTEXT listener stays for inter-broker traffic and the
#                              readiness probe, on loopback only. Combines with --brokers.
#   deploy/kafka.sh start-node K  start only node K of a cluster started before (e.g. one
#                              SIGKILLed: its JVM's pid is in node-K/kafka.pid; node K is
#                              broker id K), on its ports, with its data; waits until every
#                              running node lists all running nodes. Prints the bootstrap.
#   deploy/kafka.sh stop       SIGTERM (every node at once), wait, SIGKILL after
#                              PERG_KAFKA_STOP_TIMEOUT; ok if stopped
#   deploy/kafka.sh status     "running BOOTSTRAP pid N[,N...]" (exit 0) | "stopped" (exit 3) |
#                              "degraded BOOTSTRAP: node K stopped, ..." (exit 3, a cluster)
#   deploy/kafka.sh bootstrap  prints the bootstrap of the running broker(s) (exit 1 if none)
#   deploy/kafka.sh fetch      only download the jars
#
# Environment:
#   PERG_HOME                  tool cache (default ~/.cache/perg); jars in $PERG_HOME/kafka/libs
#   PERG_KAFKA_DIR             state dir: server.properties, data/, kafka.pid, kafka.log,
#                              bootstrap (default $PERG_HOME/kafka/run); a cluster keeps each
#                              node's in node-K/ (plus its ports) and bootstrap at the top
#   PERG_KAFKA_PORT            broker port (default: a free port; one node only)
#   PERG_KAFKA_CONTROLLER_PORT controller port (default: a free port; one node only)
#   PERG_KAFKA_HEAP            JVM heap options (default "-Xmx512m -Xms128m"; each node of a
#                              cluster "-Xmx320m -Xms64m")
#   PERG_KAFKA_START_TIMEOUT   seconds to wait for the broker(s) to answer (default 90)
#   PERG_KAFKA_STOP_TIMEOUT    seconds between SIGTERM and SIGKILL (default 30)
#   PERG_MAVEN_REPO            optional -Dmaven.repo.local for the jar download
#
# The state dir keeps the data between stop/start (storage is formatted once); delete the
# dir for a fresh broker. A single node's quorum is itself, so its ports may change between
# restarts; a cluster's nodes keep theirs (each knows the others' controller ports).
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
BOOTFILE="$STATE/bootstrap"   # what start and bootstrap print
BROKERSFILE="$STATE/brokers" # a cluster's node count (absent: one node)
START_TIMEOUT="${PERG_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${PERG_KAFKA_STOP_TIMEOUT:-30}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
PYTHON="$(command -v python3 || command -v python)"

die() { echo "kafka.sh: $*" >&2; exit 1; }
log() { echo "kafka.sh: $*" >&2; }
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
        # Debian's Maven 3.8 writes colour resets even in batch mode (-B, -Dstyle.color=never):
        # drop the escapes and the lines left empty, so no one's log gets raw "ESC[0m"
        mvn "${args[@]}" 2>&1 | sed -u -e $'s/\x1b\\[[0-9;]*[A-Za-z]//g' -e '/^[[:space:]]*$/d' >&2 \
            || { rm -rf "$tmp"; die "maven could not fetch the Kafka jars"; }  # (pipefail)
        ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 \
            || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after download"; }
        rm -rf "$LIBS"
        mv "$tmp" "$LIBS"
        touch "$LIBS/.complete-$KAFKA_VERSION"
    ) 9>"$PERG_HOME/kafka/.fetch.lock"
}

# --- process bookkeeping --------------------------------------------------------------------
# A node is a directory: server.properties, data/, logs/, kafka.pid, kafka.log (and, in a
# cluster, ports). One node: $STATE itself; a cluster: $STATE/node-1 ... node-N.
node_pid() {  # node_pid NODE: its live broker's pid (with its properties on the command line)
    local PIDFILE="$1/kafka.pid"
    daemon_pid "kafka.Kafka $1/server.properties"
}

nodes() {  # the node directories of $STATE, one a line
    if [[ -f "$BROKERSFILE" ]]; then
        local i
        for ((i = 1; i <= $(cat "$BROKERSFILE"); i++)); do echo "$STATE/node-$i"; done
    else
        echo "$STATE"
    fi
}

heap() {
    if [[ -f "$BROKERSFILE" ]]; then echo "${PERG_KAFKA_HEAP:--Xmx320m -Xms64m}"
    else echo "${PERG_KAFKA_HEAP:--Xmx512m -Xms128m}"; fi
}

java_run() {  # java_run NODE MAINCLASS ARGS... (foreground)
    local node="$1"; shift
    # shellcheck disable=SC2046
    "$JAVA" $(heap) -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$HERE/log4j2.yaml" -Dkafka.logs.dir="$node/logs" \
        -cp "$LIBS/*" "$@"
}

# Ask the broker over the Kafka protocol (stdlib only): ApiVersions, then a Metadata request
# that must list at least MIN brokers, i.e. they are registered and unfenced.
probe() {  # probe HOST PORT [MIN] -> exit 0 when ready
    "$PYTHON" - "$1" "$2" "${3:-1}" <<'PY'
import socket, struct, sys

host, port, least = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

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
        raise SystemExit(0 if brokers >= least else 2)
except OSError:
    raise SystemExit(2)
PY
}

free_ports() {  # free_ports N: N distinct TCP ports free on 127.0.0.1 right now
    "$PYTHON" - "$1" <<'PY'
import socket, sys

held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}

# --- TLS and SCRAM for --secure ----------------------------------------------------------
# $STATE/tls: ca.pem (clients trust it), broker.p12 (the brokers' key + cert for 127.0.0.1 and
# localhost, signed by the CA), client.pem + client.key (a client certificate signed by the CA,
# for the mutual TLS listener); $STATE/secrets: perg.password (the SCRAM user's), tls.password.
make_secrets() {
    local tls="$STATE/tls" secrets="$STATE/secrets"
    command -v openssl >/dev/null || die "openssl not found (needed for --secure)"
    mkdir -p "$tls" "$secrets"
    chmod 700 "$secrets"
    if [[ ! -f "$tls/broker.p12" || ! -f "$secrets/perg.password" ]]; then
        (umask 077
         openssl rand -hex 24 >"$secrets/perg.password"
         openssl rand -hex 24 >"$secrets/tls.password")
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=perg-kafka-ca" \
            -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null || die "openssl: CA failed"
        openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
            -keyout "$tls/broker.key" -out "$tls/broker.csr" 2>/dev/null \
            || die "openssl: CSR failed"
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tls/san.ext"
        openssl x509 -req -in "$tls/broker.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
            -CAcreateserial -days 3650 -extfile "$tls/san.ext" -out "$tls/broker.pem" \
            2>/dev/null || die "openssl: signing the broker certificate failed"
        openssl pkcs12 -export -in "$tls/broker.pem" -inkey "$tls/broker.key" \
            -certfile "$tls/ca.pem" -out "$tls/broker.p12" \
            -passout "file:$secrets/tls.password" || die "openssl: keystore failed"
    fi
    if [[ ! -f "$tls/client.pem" ]]; then
        (umask 077
         openssl req -newkey rsa:2048 -nodes -subj "/CN=perg-client" \
             -keyout "$tls/client.key" -out "$tls/client.csr" 2>/dev/null) \
            || die "openssl: client CSR failed"
        openssl x509 -req -in "$tls/client.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
            -CAcreateserial -days 3650 -out "$tls/client.pem" 2>/dev/null \
            || die "openssl: signing the client certificate failed"
    fi
}

write_client_env() {  # write_client_env SASL_SSL_BOOTSTRAP SSL_BOOTSTRAP
    cat >"$STATE/client.env" <<EOF
PERG_KAFKA=$1
PERG_KAFKA_SECURITY_PROTOCOL=SASL_SSL
PERG_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
PERG_KAFKA_SASL_USERNAME=perg
PERG_KAFKA_SASL_PASSWORD_FILE=$STATE/secrets/perg.password
PERG_KAFKA_SSL_CAFILE=$STATE/tls/ca.pem
EOF
    cat >"$STATE/client-mtls.env" <<EOF
PERG_KAFKA=$2
PERG_KAFKA_SECURITY_PROTOCOL=SSL
PERG_KAFKA_SSL_CAFILE=$STATE/tls/ca.pem
PERG_KAFKA_SSL_CERTFILE=$STATE/tls/client.pem
PERG_KAFKA_SSL_KEYFILE=$STATE/tls/client.key
EOF
}

# --- one node ------------------------------------------------------------------------------
write_props() {  # write_props NODE ID PORT CPORT SASL_PORT SSL_PORT VOTERS SECURE
    local node="$1" id="$2" port="$3" cport="$4" sport="$5" mport="$6" voters="$7" secure="$8"
    local brokers=1
    [[ -f "$BROKERSFILE" ]] && brokers="$(cat "$BROKERSFILE")"
    local rf=$((brokers >= 3 ? 3 : brokers))
    local isr=$((rf > 1 ? rf - 1 : 1))
    local listeners="PLAINTEXT://127.0.0.1:$port"
    (( secure )) && listeners+=",SASL_SSL://127.0.0.1:$sport,SSL://127.0.0.1:$mport"
    cat >"$node/server.properties" <<EOF
# written by deploy/kafka.sh — KRaft node $id of $brokers, loopback only
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=$listeners,CONTROLLER://127.0.0.1:$cport
advertised.listeners=$listeners
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$node/data
num.partitions=6
default.replication.factor=$rf
min.insync.replicas=$isr
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.segment.bytes=67108864
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
    if (( secure )); then
        cat >>"$node/server.properties" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$STATE/tls/broker.p12
ssl.keystore.password=$(cat "$STATE/secrets/tls.password")
ssl.truststore.type=PEM
ssl.truststore.location=$STATE/tls/ca.pem
ssl.client.auth=none
listener.name.ssl.ssl.client.auth=required
EOF
        chmod 600 "$node/server.properties"
    fi
}

format_node() {  # format_node NODE SECURE: format its storage once, with the SCRAM user
    local node="$1" secure="$2" scram=()
    [[ -f "$node/data/meta.properties" ]] && return 0
    if (( secure )); then
        local pw
        pw="$(cat "$STATE/secrets/perg.password")"
        scram=(--add-scram "SCRAM-SHA-512=[name=perg,password=$pw]"
               --add-scram "SCRAM-SHA-256=[name=perg,password=$pw]")
    fi
    # "=": an id may start with "-", which argparse would take for an option
    java_run "$node" kafka.tools.StorageTool format --cluster-id="$(cat "$STATE/cluster.id")" \
        -c "$node/server.properties" --ignore-formatted "${scram[@]}" >>"$node/kafka.log" 2>&1 \
        || { tail -n 30 "$node/kafka.log" >&2; die "formatting the storage in $node/data failed"; }
}

LAUNCHED=""
launch_node() {  # launch_node NODE: start its broker in the background; its pid in LAUNCHED
    local node="$1" waited=0
    rm -f "$node/kafka.pid"
    # setsid: own session, so the broker outlives this shell and ^C in the caller
    # shellcheck disable=SC2046
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$node/kafka.pid" \
        "$JAVA" $(heap) -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$HERE/log4j2.yaml" -Dkafka.logs.dir="$node/logs" \
        -cp "$LIBS/*" kafka.Kafka "$node/server.properties" >>"$node/kafka.log" 2>&1 \
        </dev/null 8>&- &
    while [[ ! -s "$node/kafka.pid" ]] && (( waited < 50 )); do
        sleep 0.1
        waited=$((waited + 1))
    done
    LAUNCHED="$(cat "$node/kafka.pid")"
}

wait_ready() {  # wait_ready NODE PID PORT MIN_BROKERS: until it lists MIN_BROKERS brokers
    local node="$1" pid="$2" port="$3" least="$4" deadline=$((SECONDS + START_TIMEOUT))
    until probe 127.0.0.1 "$port" "$least"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "broker exited during startup; last lines of $node/kafka.log:"
            tail -n 40 "$node/kafka.log" >&2
            rm -f "$node/kafka.pid"
            exit 1
        fi
        if (( SECONDS >= deadline )); then
            log "broker (pid $pid) did not answer on 127.0.0.1:$port with $least broker(s)" \
                "within ${START_TIMEOUT}s; last lines of $node/kafka.log:"
            tail -n 40 "$node/kafka.log" >&2
            exit 1
        fi
        sleep 0.25
    done
}

# --- commands ----------------------------------------------------------------------------
start_single() {  # start_single SECURE
    local secure="$1" pid
    if pid="$(node_pid "$STATE")"; then
        if [[ -f "$BOOTFILE" ]] && probe 127.0.0.1 "$(cut -d: -f2 "$BOOTFILE")"; then
            cat "$BOOTFILE"
            return 0
        fi
        log "broker pid $pid is running but not answering; waiting for it"
    else
        local free
        read -r -a free <<<"$(free_ports 4)"
        local port="${PERG_KAFKA_PORT:-${free[0]}}"
        local cport="${PERG_KAFKA_CONTROLLER_PORT:-${free[1]}}"
        local sport="${PERG_KAFKA_SASL_PORT:-${free[2]}}" mport="${free[3]}"
        mkdir -p "$STATE/data" "$STATE/logs"
        write_props "$STATE" 1 "$port" "$cport" "$sport" "$mport" "1@127.0.0.1:$cport" "$secure"
        (( secure )) && write_client_env "127.0.0.1:$sport" "127.0.0.1:$mport"
        format_node "$STATE" "$secure"
        echo "127.0.0.1:$port" >"$BOOTFILE"
        launch_node "$STATE"
        pid="$LAUNCHED"
    fi
    wait_ready "$STATE" "$pid" "$(cut -d: -f2 "$BOOTFILE")" 1
    cat "$BOOTFILE"
}

start_cluster() {  # start_cluster SECURE [K]: start every node not running (or only node K),
    # then wait until each running node lists all the running nodes as brokers
    local secure="$1" only="${2:-}" n i node port cport sport mport
    n="$(cat "$BROKERSFILE")"
    if [[ ! -f "$STATE/node-1/ports" ]]; then  # first start: 4 ports a node, all distinct
        local free
        read -r -a free <<<"$(free_ports $((4 * n)))"
        for ((i = 1; i <= n; i++)); do
            mkdir -p "$STATE/node-$i/data" "$STATE/node-$i/logs"
            echo "${free[@]:$((4 * (i - 1))):4}" >"$STATE/node-$i/ports"
        done
    fi
    local voters="" boot="" sasl="" mtls=""
    for ((i = 1; i <= n; i++)); do
        read -r port cport sport mport <"$STATE/node-$i/ports"
        voters+="${voters:+,}$i@127.0.0.1:$cport"
        boot+="${boot:+,}127.0.0.1:$port"
        sasl+="${sasl:+,}127.0.0.1:$sport"
        mtls+="${mtls:+,}127.0.0.1:$mport"
    done
    echo "$boot" >"$BOOTFILE"
    (( secure )) && write_client_env "$sasl" "$mtls"
    local pids=() down=() formats=()
    for ((i = 1; i <= n; i++)); do
        node="$STATE/node-$i"
        if pid="$(node_pid "$node")"; then pids[i]="$pid"; continue; fi
        [[ -n "$only" && "$i" != "$only" ]] && continue
        read -r port cport sport mport <"$node/ports"
        write_props "$node" "$i" "$port" "$cport" "$sport" "$mport" "$voters" "$secure"
        format_node "$node" "$secure" &  # one JVM each: at once
        formats+=("$!")
        down+=("$i")
    done
    for pid in "${formats[@]}"; do wait "$pid" || die "formatting a node's storage failed"; done
    for i in "${down[@]}"; do
        launch_node "$STATE/node-$i"
        pids[i]="$LAUNCHED"
    done
    for i in "${!pids[@]}"; do  # all started first: a controller needs a quorum
        read -r port _ <"$STATE/node-$i/ports"
        wait_ready "$STATE/node-$i" "${pids[i]}" "$port" "${#pids[@]}"
    done
    cat "$BOOTFILE"
}

cmd_start() {
    local secure=0 brokers=""
    while (( $# )); do
        case "$1" in
            --secure) secure=1 ;;
            --brokers) brokers="${2:-}"; shift || true ;;
            --brokers=*) brokers="${1#*=}" ;;
            *) bad_usage "start: unknown option '$1' (start [--brokers N] [--secure])" ;;
        esac
        shift
    done
    if [[ -n "$brokers" && ! "$brokers" =~ ^[1-9]$ ]]; then
        bad_usage "--brokers: a number of brokers from 1 to 9, got '$brokers'"
    fi
    [[ -f "$STATE/tls/broker.p12" ]] && secure=1
    mkdir -p "$STATE"
    exec 8>"$STATE/.lock"
    flock 8
    local have=1
    [[ -f "$BROKERSFILE" ]] && have="$(cat "$BROKERSFILE")"
    if [[ -n "$brokers" && "$brokers" != "$have" ]]; then
        if [[ -f "$BROKERSFILE" || -d "$STATE/data" ]]; then
            bad_usage "the state dir $STATE holds a $have-broker Kafka, not $brokers: stop it" \
                "and delete the dir, or use another PERG_KAFKA_DIR"
        fi
        echo "$brokers" >"$BROKERSFILE"
    fi
    command -v "$JAVA" >/dev/null || die "java not found (need Java 17+)"
    fetch
    (( secure )) && make_secrets
    [[ -f "$STATE/cluster.id" ]] || "$PYTHON" -c \
        'import base64,uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))' \
        >"$STATE/cluster.id"
    if [[ -f "$BROKERSFILE" ]]; then start_cluster "$secure"; else start_single "$secure"; fi
}

cmd_start_node() {  # start node K of a cluster started before (on its ports), wait for it
    local k="${1:-}" n
    [[ -f "$BROKERSFILE" && -f "$STATE/node-1/ports" ]] \
        || bad_usage "start-node: $STATE holds no cluster started before (start --brokers N)"
    n="$(cat "$BROKERSFILE")"
    [[ "$k" =~ ^[1-9]$ ]] && (( k <= n )) || bad_usage "start-node: a node from 1 to $n, got '$k'"
    local secure=0
    [[ -f "$STATE/tls/broker.p12" ]] && secure=1
    exec 8>"$STATE/.lock"
    flock 8
    command -v "$JAVA" >/dev/null || die "java not found (need Java 17+)"
    fetch
    start_cluster "$secure" "$k"
}

cmd_stop() {  # SIGTERM every node at once (a lone survivor waits for no quorum), SIGKILL late
    mkdir -p "$STATE"
    exec 8>"$STATE/.lock"
    flock 8
    local node pid pids=()
    while read -r node; do
        if pid="$(node_pid "$node")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$node/kafka.pid"
    done < <(nodes)
    if (( ${#pids[@]} == 0 )); then
        log "not running"
        return 0
    fi
    local deadline=$((SECONDS + STOP_TIMEOUT))
    for pid in "${pids[@]}"; do
        wait_or_kill "$pid" "$deadline" "$STOP_TIMEOUT"
    done
    log "stopped (pid ${pids[*]})"
}

cmd_status() {
    local node pid pids=() down=() i=0
    while read -r node; do
        i=$((i + 1))
        if pid="$(node_pid "$node")"; then pids+=("$pid"); else down+=("node $i"); fi
    done < <(nodes)
    if (( ${#pids[@]} == 0 )); then
        echo "stopped"
        return 3
    fi
    local joined
    joined="$(IFS=,; echo "${pids[*]}")"
    if (( ${#down[@]} )); then
        echo "degraded $(cat "$BOOTFILE"): $(IFS=,; echo "${down[*]}") stopped; running pid $joined"
        return 3
    fi
    echo "running $(cat "$BOOTFILE") pid $joined"
}

cmd_bootstrap() {
    local node
    while read -r node; do
        if node_pid "$node" >/dev/null; then cat "$BOOTFILE"; return 0; fi
    done < <(nodes)
    die "no broker running for state dir $STATE (run: $0 start)"
}

bad_usage() { echo "kafka.sh: $*" >&2; exit 2; }

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    start-node) shift; cmd_start_node "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    bootstrap) cmd_bootstrap ;;
    fetch) fetch; echo "$LIBS" ;;
    *) echo "usage: $0 start [--brokers N] [--secure]|start-node K|stop|status|bootstrap|fetch" >&2; exit 2 ;;
esac
