#!/bin/bash
# Entry point of the apache/kafka stand-in (kafka.Dockerfile): as the official image does,
# every KAFKA_* variable but the JVM ones becomes a broker property (KAFKA_LOG_DIRS -> log.dirs;
# ___ -> '-', __ -> '_'), the storage is formatted once with CLUSTER_ID, then the broker runs.
set -euo pipefail
props=/opt/kafka/config/server.properties
: >"$props"
for name in $(compgen -e); do
    case "$name" in
        KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_LOG4J_OPTS | KAFKA_JMX_OPTS) ;;
        KAFKA_*)
            key="${name#KAFKA_}"
            key="${key,,}"
            key="${key//___/-}"
            key="${key//__/@}"
            key="${key//_/.}"
            echo "${key//@/_}=${!name}" >>"$props"
            ;;
    esac
done
# shellcheck disable=SC2206
jvm=(${KAFKA_HEAP_OPTS:--Xmx1g -Xms256m} -XX:+UseG1GC -Djava.awt.headless=true
    -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.yaml -Dkafka.logs.dir=/tmp/kafka-logs
    -cp '/opt/kafka/libs/*')
java "${jvm[@]}" kafka.tools.StorageTool format --cluster-id="${CLUSTER_ID:?CLUSTER_ID is required}" \
    -c "$props" --ignore-formatted
exec java "${jvm[@]}" kafka.Kafka "$props"
