"""The broker-loss scenario (issue 20 item 3), shared by tests/test_chaos_broker_loss.py and
benchmarks/broker_loss.py.

On a three-broker cluster (replication 3, min.insync.replicas 2), a pipeline of its own (fresh
workers and topics) evaluates the chaos suite's 30-row sample (450 results) on a scripted
double serving ``slots`` calls at once, 0.05 s each. With ``lose_broker``, once a tenth of the
results is stored the broker leading the most of the run's partitions is SIGKILLed; once the
controller has moved every leadership off it and the run has stored more results with it down,
it is started again (``kafka.sh start-node``) while the run goes on. The run's wall time is
submit to ``done``.

Until the controller fences the dead broker (``broker.session.timeout.ms``, 9 s by default,
counted from the controller's election when the dead broker was the active controller, ~2.5 s
more) it stays in every partition's ISR, so no ``acks=all`` write anywhere in the cluster
completes (and no offset commit): the run stalls for that long whatever the clients do, then
for the clients' recovery (new leaders from the metadata, the group coordinators found again).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka_cluster import BROKERS, KafkaCluster, busiest_leader
from pipeline_harness import Pipeline, stopped_at_exit, wait_until
from test_chaos import Chaos
from test_pipeline_e2e import SAMPLE

SLOTS = 6  # the test's: 120 calls/s, a fault-free run lasts ~20 s on the cluster
SERVICE_S = 0.05
EXPECTED = SAMPLE * 15
KILL_AT = EXPECTED // 10  # results stored when the leader is killed: every service is busy
RUN_TOPICS = ("runs", "work", "align", "generations", "verdicts")


@dataclass
class Outcome:
    """One run: its wall time, what was stored, its metrics, and (a broker lost) when."""

    chaos: Chaos
    wall_s: float
    stored: int  # result rows of the run
    distinct: int  # distinct (row_id, setting, method) among them
    metrics: list[dict[str, Any]]
    loss: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return EXPECTED - self.distinct

    @property
    def duplicated(self) -> int:
        return self.stored - self.distinct


@contextmanager
def scenario(
    cluster: KafkaCluster, workdir: Path, *, lose_broker: bool, slots: int = SLOTS
) -> Iterator[Outcome]:
    """Run the sample on a fresh pipeline, losing a broker mid-run or not; the pipeline still
    runs inside the block (for more checks on what it stored)."""
    workdir.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(
        cluster.bootstrap,
        workdir,
        f"loss-{uuid.uuid4().hex[:8]}",
        kafka_security=cluster.security,
    )
    with stopped_at_exit(pipeline):
        with ThreadPoolExecutor(max_workers=1) as background:
            pipeline.model_url = pipeline.start_double(
                "--slots", str(slots), "--service-s", str(SERVICE_S)
            )
            pipeline.workers.start_all(generators=2)
            pipeline.wait_for_sink()
            chaos = Chaos(pipeline)
            chaos.submit()
            loss: dict[str, Any] = {}
            restart: Future[float] | None = None
            if lose_broker:
                node, loss = _lose_a_broker(cluster, chaos)
                restarting = time.monotonic()
                restart = background.submit(_start_node, cluster, node)
            wall_s = chaos.wait_done()
            if restart is not None:
                loss["restart_s"] = round(restart.result(timeout=300), 1)
                topics = _topics(chaos)
                wait_until(
                    lambda: cluster.in_sync(topics) == BROKERS,
                    "the restarted broker back in every ISR",
                    timeout_s=120,
                )
                loss["restart_to_in_sync_s"] = round(time.monotonic() - restarting, 1)
        [counts] = pipeline.sql(
            "SELECT count(*) AS n, count(DISTINCT (row_id, setting, method)) AS distinct_n "
            f"FROM results WHERE run_id = '{chaos.run_id}'"
        )
        yield Outcome(chaos, wall_s, counts["n"], counts["distinct_n"], chaos.metrics(), loss)


def _start_node(cluster: KafkaCluster, node: int) -> float:
    """Start node ``node`` again; how long ``kafka.sh start-node`` took (a JVM start)."""
    begun = time.monotonic()
    cluster.start_node(node)
    return time.monotonic() - begun


def _topics(chaos: Chaos) -> list[str]:
    return [f"{chaos.pipeline.prefix}.{suffix}" for suffix in RUN_TOPICS]


def _lose_a_broker(cluster: KafkaCluster, chaos: Chaos) -> tuple[int, dict[str, Any]]:
    """SIGKILL the busiest leader once the run is under way; return once leadership moved
    off it and the run stored more results: (its node id, figures)."""
    wait_until(lambda: chaos.progress() >= KILL_AT, f"{KILL_AT} stored results", poll_s=0.1)
    topics = _topics(chaos)
    node, led = busiest_leader(wait_until(lambda: cluster.leaders(topics), "leaders"))
    at = chaos.progress()
    killed = time.monotonic()
    cluster.kill(node)
    wait_until(lambda: not cluster.alive(node), f"broker {node} gone", timeout_s=30, poll_s=0.05)

    def moved() -> bool:
        leaders = set(cluster.leaders(topics).values())
        return bool(leaders) and node not in leaders and -1 not in leaders

    wait_until(moved, f"leadership moved off broker {node}", timeout_s=120, poll_s=0.25)
    failover_s = time.monotonic() - killed
    moved_at = chaos.progress()
    wait_until(
        lambda: chaos.progress() > moved_at,
        "stored results after the failover",
        timeout_s=120,
        poll_s=0.1,
    )
    return node, {
        "broker": node,
        "partitions_led": led,
        "killed_at_results": at,
        "kill_to_failover_s": round(failover_s, 1),
        "kill_to_progress_s": round(time.monotonic() - killed, 1),
    }
