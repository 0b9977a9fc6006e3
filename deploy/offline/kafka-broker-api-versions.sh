#!/bin/bash
# The admin tool docker-compose.yml's Kafka health check runs, as in the official image.
exec java -Xmx128m -cp '/opt/kafka/libs/*' org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
