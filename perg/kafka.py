"""Kafka administration shared by the CLI and the services."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
)

from perg.config import Settings
from perg.errors import UnavailableError
from schemas import ALL_TOPICS, Record, TopicSpec

__all__ = ["KafkaUnavailable", "ensure_topics", "publish_records", "reaching_kafka"]

# What aiokafka raises when no broker answers (connection refused, unknown host, timeouts).
_UNREACHABLE = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError)


class KafkaUnavailable(UnavailableError):
    """The Kafka broker cannot be reached; the message names the bootstrap servers."""


@contextlib.contextmanager
def reaching_kafka(settings: Settings) -> Iterator[None]:
    """Turn aiokafka's "no broker answers" errors in the block into :class:`KafkaUnavailable`."""
    try:
        yield
    except _UNREACHABLE as exc:
        detail = str(exc) or type(exc).__name__
        raise KafkaUnavailable(
            f"cannot reach Kafka at {settings.kafka} ({detail}); is the broker running? "
            "(set PERG_KAFKA or --bootstrap)"
        ) from exc


async def ensure_topics(settings: Settings) -> None:
    """Create every topic that does not exist yet (idempotent, safe to race).

    :class:`KafkaUnavailable` when the broker cannot be reached.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka)
    with reaching_kafka(settings):
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(
                    name=spec.name(settings.topic_prefix),
                    num_partitions=settings.partitions,
                    replication_factor=1,
                    topic_configs={"cleanup.policy": "compact"} if spec.compacted else {},
                )
                for spec in ALL_TOPICS
                if spec.name(settings.topic_prefix) not in existing
            ]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                    await admin.create_topics(missing)
        finally:
            await admin.close()


async def publish_records(
    settings: Settings, topic: TopicSpec, records: Sequence[tuple[bytes, Record]]
) -> None:
    """Publish ``(key, record)`` pairs to ``topic`` (created if missing) and wait for the
    broker's acknowledgement (``acks=all``); :class:`KafkaUnavailable` when unreachable."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, acks="all")
    with reaching_kafka(settings):
        await producer.start()
        try:
            for key, record in records:
                await producer.send_and_wait(
                    topic.name(settings.topic_prefix), record.encode(), key=key
                )
        except _UNREACHABLE:
            raise
        except KafkaError as exc:  # not taken: one line for the user, not a traceback
            raise KafkaUnavailable(
                f"Kafka at {settings.kafka} did not take the record ({type(exc).__name__}: {exc})"
            ) from exc
        finally:
            await producer.stop()
