"""deploy/kafka.sh end to end: start, produce/consume, status, idempotence, stop."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from kafka_fixture import broker_session, kafka_script, start_broker

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="java is needed for deploy/kafka.sh"),
]


async def _roundtrip(bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"perg-script-test-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=20_000, max_records=1)
        while not batches:  # first poll may only join the group
            batches = await consumer.getmany(timeout_ms=20_000, max_records=1)
        records = [r for rs in batches.values() for r in rs]
        assert [(r.key, r.value) for r in records] == [(b"k", b"hello")]
        await consumer.commit()
    finally:
        await consumer.stop()


async def test_start_roundtrip_status_stop(tmp_path: Path) -> None:
    state = tmp_path / "kafka"
    assert kafka_script(state, "status").stdout.strip() == "stopped"
    assert kafka_script(state, "status").returncode == 3
    assert kafka_script(state, "bootstrap").returncode != 0

    bootstrap = start_broker(state)
    try:
        host, port = bootstrap.split(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert (state / "kafka.pid").is_file() and (state / "kafka.log").is_file()

        await _roundtrip(bootstrap)

        status = kafka_script(state, "status")
        assert status.returncode == 0
        assert status.stdout.startswith(f"running {bootstrap} pid ")
        assert kafka_script(state, "bootstrap").stdout.strip() == bootstrap

        # idempotent start: same broker, same pid
        pid = (state / "kafka.pid").read_text().strip()
        again = kafka_script(state, "start")
        assert again.returncode == 0 and again.stdout.strip() == bootstrap
        assert (state / "kafka.pid").read_text().strip() == pid
    finally:
        stop = kafka_script(state, "stop")
    assert stop.returncode == 0, stop.stderr
    status = kafka_script(state, "status")
    assert status.returncode == 3 and status.stdout.strip() == "stopped"
    # stopping a stopped broker is fine
    assert kafka_script(state, "stop").returncode == 0

    # restart on the same state dir keeps the data (no re-format)
    bootstrap = start_broker(state)
    try:
        await _roundtrip(bootstrap)
    finally:
        assert kafka_script(state, "stop").returncode == 0


def test_fixture_broker_answers(request: pytest.FixtureRequest) -> None:
    """The session fixture when tests/conftest.py provides it, else the same logic directly."""
    import asyncio

    try:
        bootstrap = request.getfixturevalue("kafka_broker")
    except pytest.FixtureLookupError:
        with broker_session() as bootstrap:
            asyncio.run(_roundtrip(bootstrap))
        return
    asyncio.run(_roundtrip(bootstrap))


def test_start_node_needs_a_cluster_started_before(tmp_path: Path) -> None:
    proc = kafka_script(tmp_path, "start-node", "1")
    assert proc.returncode == 2
    assert "no cluster started before" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing started, nothing written
