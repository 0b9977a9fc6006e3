# Stand-in for apache/kafka:4.1.0, built by deploy/offline-images.sh where no image registry is
# reachable: Debian's OpenJDK 17 and the Kafka 4.1.0 jars deploy/kafka/pom.xml fetches from
# Maven Central (libs/), laid out as the official image is for what docker-compose.yml uses:
# KAFKA_* environment -> server.properties, CLUSTER_ID, /var/lib/kafka/data, uid 1000,
# /opt/kafka/bin/kafka-broker-api-versions.sh (the health check).
FROM debian:bookworm-slim
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 appuser \
    && mkdir -p /opt/kafka/config /var/lib/kafka/data \
    && chown appuser:appuser /opt/kafka/config /var/lib/kafka/data
COPY libs/ /opt/kafka/libs/
COPY log4j2.yaml /opt/kafka/config/log4j2.yaml
COPY kafka-run.sh /opt/kafka/bin/kafka-run.sh
COPY kafka-broker-api-versions.sh /opt/kafka/bin/kafka-broker-api-versions.sh
USER appuser
LABEL org.perg.stand-in="apache/kafka:4.1.0 from Maven Central jars (deploy/offline-images.sh)"
ENTRYPOINT ["/opt/kafka/bin/kafka-run.sh"]
