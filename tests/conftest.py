"""Shared fixtures: the real Kafka broker (tests/kafka_fixture.py)."""

pytest_plugins = ["kafka_fixture"]
