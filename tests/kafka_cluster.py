"""A three-broker Kafka cluster of its own (``deploy/kafka.sh start --brokers 3 --secure``),
for the broker-loss scenario (tests/test_chaos_broker_loss.py, benchmarks/broker_loss.py).

The cluster serves both listeners a client may use: PLAINTEXT and SASL_SSL (SCRAM, TLS with
the CA kafka.sh made). :class:`KafkaCluster` is one client's view of it (``over(protocol)``):
what that client needs (``client_env``: ``PERG_KAFKA`` and, for SASL_SSL, the
``PERG_KAFKA_*`` security keys of ``client.env``), which broker leads which partition (Kafka
metadata, over that listener), and how to lose a broker (SIGKILL of its JVM, the pid in
``node-K/kafka.pid``) and bring it back (``deploy/kafka.sh start-node K``).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kafka_fixture import SecureKafka, kafka_script, secure_kafka

from perg.config import load_settings
from perg.kafka import KafkaUnavailable, admin_client

BROKERS = 3
PROTOCOLS = ("PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True)
class KafkaCluster:
    kafka: SecureKafka  # the cluster's state dir and its listeners' client settings
    client_env: dict[str, str]  # PERG_KAFKA and the PERG_KAFKA_* security keys

    def over(self, protocol: str) -> KafkaCluster:
        """The view of a client connecting over ``protocol`` (one of :data:`PROTOCOLS`)."""
        envs = {"PLAINTEXT": {"PERG_KAFKA": self.kafka.plaintext}, "SASL_SSL": self.kafka.sasl_ssl}
        return replace(self, client_env=dict(envs[protocol]))

    @property
    def state(self) -> Path:
        return self.kafka.state_dir

    @property
    def bootstrap(self) -> str:
        return self.client_env["PERG_KAFKA"]

    @property
    def security(self) -> dict[str, str]:
        """The ``PERG_KAFKA_*`` security keys (none for PLAINTEXT)."""
        return {k: v for k, v in self.client_env.items() if k != "PERG_KAFKA"}

    @property
    def protocol(self) -> str:
        return self.client_env.get("PERG_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")

    def pid(self, node: int) -> int:
        """The pid of node ``node``'s broker JVM (kafka.sh writes it at launch)."""
        return int((self.state / f"node-{node}" / "kafka.pid").read_text().strip())

    def leaders(self, topics: list[str]) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the node id of its leader (-1: none), from the metadata;
        empty when the broker asked does not answer (a dead one not fenced yet)."""
        return {tp: int(p["leader"]) for tp, p in self._partitions(topics).items()}

    def in_sync(self, topics: list[str]) -> int:
        """The fewest in-sync replicas of any partition of ``topics`` (0: no answer)."""
        return min((len(p["isr"]) for p in self._partitions(topics).values()), default=0)

    def _partitions(self, topics: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
        try:
            return asyncio.run(self._describe(topics))
        except KafkaUnavailable:
            return {}

    async def _describe(self, topics: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
        settings = load_settings(self.client_env)
        async with admin_client(settings) as admin:
            described = await admin.describe_topics(topics)
        return {
            (topic["topic"], partition["partition"]): partition
            for topic in described
            for partition in topic["partitions"]
        }

    def kill(self, node: int) -> None:
        """SIGKILL node ``node``'s broker: no shutdown, no leadership handed over."""
        pid = self.pid(node)
        os.kill(pid, signal.SIGKILL)

    def alive(self, node: int) -> bool:
        """Whether node ``node``'s broker JVM still runs (a zombie's command line is empty)."""
        try:
            cmdline = Path(f"/proc/{self.pid(node)}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False
        return b"kafka.Kafka" in cmdline

    def start_node(self, node: int) -> None:
        """``deploy/kafka.sh start-node NODE``: start it on its ports, wait until it is back
        in the cluster."""
        proc = kafka_script(self.state, "start-node", str(node))
        if proc.returncode != 0:
            raise RuntimeError(f"kafka.sh start-node {node} failed:\n{proc.stderr[-3000:]}")


def busiest_leader(leaders: dict[tuple[str, int], int]) -> tuple[int, int]:
    """(node id, partitions it leads) of the broker leading the most of ``leaders``."""
    [(node, led)] = Counter(leaders.values()).most_common(1)
    return node, led


@contextmanager
def kafka_cluster_session() -> Iterator[KafkaCluster]:
    """A fresh three-broker cluster (kafka_fixture.secure_kafka: skipped without java and
    openssl, stopped and removed on exit), the PLAINTEXT client's view of it."""
    with secure_kafka(BROKERS) as kafka:
        yield KafkaCluster(kafka, {"PERG_KAFKA": kafka.plaintext})
