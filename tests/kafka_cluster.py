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
import shutil
import signal
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kafka_fixture import kafka_script

from perg.config import load_settings
from perg.kafka import KafkaUnavailable, admin_client

BROKERS = 3
PROTOCOLS = ("PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True)
class KafkaCluster:
    state: Path
    client_env: dict[str, str]  # PERG_KAFKA and the PERG_KAFKA_* security keys

    def over(self, protocol: str) -> KafkaCluster:
        """The view of a client connecting over ``protocol`` (one of :data:`PROTOCOLS`)."""
        if protocol == "PLAINTEXT":
            return replace(
                self, client_env={"PERG_KAFKA": (self.state / "bootstrap").read_text().strip()}
            )
        lines = (self.state / "client.env").read_text().splitlines()
        env = dict(line.split("=", 1) for line in lines if "=" in line)
        if env.get("PERG_KAFKA_SECURITY_PROTOCOL") != protocol:
            raise ValueError(
                f"client.env is for {env.get('PERG_KAFKA_SECURITY_PROTOCOL')}, not {protocol}"
            )
        return replace(self, client_env=env)

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


def tools_missing() -> bool:
    """No java or no openssl to run deploy/kafka.sh start --secure."""
    java = shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME"))
    return not java or shutil.which("openssl") is None


@contextmanager
def kafka_cluster_session() -> Iterator[KafkaCluster]:
    """A fresh three-broker cluster in a temporary state dir (the PLAINTEXT client's view);
    stopped and removed on exit, also when starting it fails."""
    state = Path(tempfile.mkdtemp(prefix="perg-kafka-cluster-"))
    try:
        args = ["start", "--brokers", str(BROKERS), "--secure"]
        proc = kafka_script(state, *args)
        if proc.returncode != 0:
            raise RuntimeError(f"kafka.sh {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        yield KafkaCluster(state, {}).over("PLAINTEXT")
    finally:
        kafka_script(state, "stop", timeout=120)
        shutil.rmtree(state, ignore_errors=True)
