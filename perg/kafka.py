"""Kafka administration and client options shared by the CLI and the services.

:func:`client_options` is the one place that turns :class:`~perg.config.Settings` into an
aiokafka client's keyword arguments (bootstrap servers, security protocol, SASL, TLS with host
name verification); every producer, consumer and admin client is built with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
)
from aiokafka.helpers import create_ssl_context

from perg.config import KafkaSecurity, Settings
from perg.errors import InputError, UnavailableError
from schemas import ALL_TOPICS, Record, TopicSpec

__all__ = [
    "KafkaUnavailable",
    "client_options",
    "ensure_topics",
    "publish_records",
    "reaching_kafka",
    "started",
    "topic_layout",
]

log = logging.getLogger("perg.kafka")

# What aiokafka raises when no broker answers (connection refused, unknown host, timeouts).
_UNREACHABLE = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError)
DIAGNOSE_TIMEOUT_S = 10.0


class KafkaUnavailable(UnavailableError):
    """The Kafka broker cannot be reached; the message names the bootstrap servers."""


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    """The TLS context of ``security``: its CA (else the system's), the client certificate for
    mutual TLS, certificate and host name verification on (aiokafka's helper forces both)."""
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=security.ssl_cafile,
            certfile=security.ssl_certfile,
            keyfile=security.ssl_keyfile,
        )
        return context
    except (ssl.SSLError, OSError) as exc:
        raise InputError(
            "PERG_KAFKA_SSL_CAFILE/CERTFILE/KEYFILE: cannot load the TLS files "
            f"({type(exc).__name__}: {exc})"
        ) from None


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments every aiokafka client of ``settings`` takes (no secret is logged:
    aiokafka keeps the password in the connection object only)."""
    security = settings.kafka_security
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka,
        "security_protocol": security.protocol,
    }
    if security.uses_tls:
        options["ssl_context"] = ssl_context(security)
    if security.uses_sasl:
        options["sasl_mechanism"] = security.sasl_mechanism
        options["sasl_plain_username"] = security.sasl_username
        options["sasl_plain_password"] = security.sasl_password
    return options


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


class _Startable(Protocol):
    async def start(self) -> None: ...


async def started(client: _Startable, settings: Settings) -> None:
    """``client.start()``; when no broker lets it in, :class:`KafkaUnavailable` saying why
    (refused connection, untrusted certificate, rejected credentials) in one line."""
    try:
        await client.start()
    except _UNREACHABLE as exc:
        reason = await _diagnose(settings)
        if reason is None:
            with reaching_kafka(settings):
                raise
        raise KafkaUnavailable(f"cannot connect to Kafka at {settings.kafka}: {reason}") from exc


async def _diagnose(settings: Settings) -> str | None:
    """Why the first bootstrap server refuses a connection (TLS, SASL), in words; None when
    it lets one in or does not answer at all."""
    host, _, port = settings.kafka.split(",")[0].strip().rpartition(":")
    options = client_options(settings)
    options.pop("bootstrap_servers")
    security = settings.kafka_security
    try:
        async with asyncio.timeout(DIAGNOSE_TIMEOUT_S):
            conn = await create_conn(host or port, int(port) if host else 9092, **options)
        conn.close()
    except ssl.SSLCertVerificationError as exc:
        where = security.ssl_cafile or "the system's CA store"
        return f"the broker's TLS certificate is not trusted by {where} ({exc.verify_message})"
    except ssl.SSLError as exc:
        handshake = (
            f"TLS handshake failed ({exc.reason or exc}); is the listener {security.protocol}?"
        )
        return _refused_certificate(exc, security) or handshake
    except KafkaError as exc:
        # TLS 1.3: the broker checks the client's certificate after the client's handshake is
        # done, so its alert comes with the first read, as the cause of a closed connection
        if isinstance(exc.__cause__, ssl.SSLError):
            refused = _refused_certificate(exc.__cause__, security)
            if refused:
                return refused
        if "uthentication" in type(exc).__name__ or "uthentication" in str(exc):
            return (
                f"the broker rejected the {security.sasl_mechanism} credentials of user "
                f"{security.sasl_username!r} (PERG_KAFKA_SASL_USERNAME and its password)"
            )
        return f"{type(exc).__name__}: {exc}"
    except (OSError, TimeoutError, ValueError):
        return None  # nobody answers: "cannot reach Kafka ..., is the broker running?"
    return None


# TLS alerts a broker sends when it refuses the client's certificate (or its absence): Java
# brokers send bad_certificate for none and certificate_unknown for one it cannot verify;
# OpenSSL-based ones certificate_required and unknown_ca.
_CERTIFICATE_ALERTS = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
    }
)


def _refused_certificate(exc: ssl.SSLError, security: KafkaSecurity) -> str | None:
    """In words, when ``exc`` is the broker's alert refusing the client certificate."""
    if exc.reason not in _CERTIFICATE_ALERTS:
        return None
    if security.ssl_certfile is None:
        return (
            "the broker requires a client certificate (mutual TLS): set "
            f"PERG_KAFKA_SSL_CERTFILE and PERG_KAFKA_SSL_KEYFILE (TLS alert {exc.reason})"
        )
    return (
        f"the broker refused the client certificate {security.ssl_certfile} (not signed by a "
        f"CA it trusts, expired or revoked; TLS alert {exc.reason})"
    )


@contextlib.asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await started(admin, settings)
    try:
        with reaching_kafka(settings):
            yield admin
    finally:
        await admin.close()


def topic_layout(settings: Settings, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for topics created on ``brokers`` brokers."""
    replication = settings.replication or min(3, max(brokers, 1))
    if replication > brokers:
        raise InputError(
            f"PERG_REPLICATION={replication} needs at least {replication} brokers; "
            f"the cluster at {settings.kafka} has {brokers}"
        )
    min_insync = settings.min_insync_replicas or max(replication - 1, 1)
    if min_insync > replication:
        raise InputError(
            f"PERG_MIN_INSYNC_REPLICAS={min_insync} is more than the replication factor "
            f"{replication}"
        )
    return replication, min_insync


async def ensure_topics(settings: Settings) -> None:
    """Create every topic that does not exist yet (idempotent, safe to race); warn, naming the
    topic, when an existing one has other partition counts or replication than configured.

    :class:`KafkaUnavailable` when the broker cannot be reached.
    """
    async with admin_client(settings) as admin:
        brokers = len((await admin.describe_cluster())["brokers"])
        replication, min_insync = topic_layout(settings, brokers)
        names = {spec.name(settings.topic_prefix): spec for spec in ALL_TOPICS}
        present = [name for name in await admin.list_topics() if name in names]
        # only topics that exist: a metadata request for others may auto-create them
        existing = {t["topic"]: t for t in await admin.describe_topics(present)} if present else {}
        missing = [
            NewTopic(
                name=name,
                num_partitions=settings.partitions,
                replication_factor=replication,
                topic_configs={
                    "min.insync.replicas": str(min_insync),
                    **({"cleanup.policy": "compact"} if spec.compacted else {}),
                },
            )
            for name, spec in names.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                await admin.create_topics(missing)
        for name, topic in existing.items():
            _warn_if_different(name, topic.get("partitions") or [], settings, replication)


def _warn_if_different(
    name: str, partitions: list[dict[str, Any]], settings: Settings, replication: int
) -> None:
    if not partitions:
        return
    replicas = min(len(p["replicas"]) for p in partitions)
    if len(partitions) != settings.partitions or replicas != replication:
        log.warning(
            "topic %s exists with %d partitions, replication %d; configured: %d partitions "
            "(PERG_PARTITIONS), replication %d (PERG_REPLICATION). Kafka does not change an "
            "existing topic: alter it (kafka-topics.sh --alter, kafka-reassign-partitions.sh) "
            "or use a new PERG_TOPIC_PREFIX",
            name,
            len(partitions),
            replicas,
            settings.partitions,
            replication,
        )


async def publish_records(
    settings: Settings, topic: TopicSpec, records: Sequence[tuple[bytes, Record]]
) -> None:
    """Publish ``(key, record)`` pairs to ``topic`` (created if missing) and wait for the
    broker's acknowledgement (``acks=all``); :class:`KafkaUnavailable` when unreachable."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(**client_options(settings), acks="all", enable_idempotence=True)
    await started(producer, settings)
    with reaching_kafka(settings):
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
