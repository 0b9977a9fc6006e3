"""Chaos suite, a broker lost mid-run (issue 20 item 3): on a three-broker cluster (replication
3, min.insync.replicas 2) serving PLAINTEXT and SASL_SSL, with every client over PLAINTEXT and
again with every client over SASL_SSL, the broker leading the most of the run's partitions is
SIGKILLed mid-run and started again later (tests/broker_loss.py). The run completes, every
result is stored exactly once, and the metrics equal those of a fault-free run on the same
cluster (one per module, over PLAINTEXT: the metrics do not depend on the protocol).

The figures (wall time as a ratio to that run, results lost and duplicated, kill to failover,
restart to the broker back in every ISR) are printed (``pytest -s``). The wall-time ratio to
quote is benchmarks/broker_loss.py's: a fault-free run per protocol, on a run long enough that
Kafka's own failover (9-12 s, tests/broker_loss.py) is not most of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from broker_loss import Outcome, scenario
from kafka_cluster import PROTOCOLS, KafkaCluster, kafka_cluster_session

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.chaos]

REPORT: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[KafkaCluster]:
    """A fresh three-broker cluster with PLAINTEXT and SASL_SSL listeners, for this module."""
    with kafka_cluster_session() as cluster:
        yield cluster
    if REPORT:
        print("\nbroker-loss report:\n" + orjson.dumps(REPORT, option=orjson.OPT_INDENT_2).decode())


@pytest.fixture(scope="module")
def fault_free(kafka_cluster: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """The reference: the same run on the same cluster, nothing lost (PLAINTEXT clients)."""
    with scenario(kafka_cluster, tmp_path_factory.mktemp("fault-free"), lose_broker=False) as run:
        run.chaos.check_exactly_once()
    REPORT["fault_free"] = {"protocol": "PLAINTEXT", "wall_s": round(run.wall_s, 1)}
    return run


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_broker_loss_mid_run(
    kafka_cluster: KafkaCluster, fault_free: Outcome, protocol: str, tmp_path: Path
) -> None:
    with scenario(kafka_cluster.over(protocol), tmp_path, lose_broker=True) as lost:
        figures = lost.chaos.check_exactly_once()
    assert (lost.lost, lost.duplicated) == (0, 0)
    assert lost.metrics == fault_free.metrics
    assert lost.loss["partitions_led"] >= 1
    REPORT[f"broker_loss_{protocol}"] = {
        "wall_s": round(lost.wall_s, 1),
        "wall_ratio_to_fault_free": round(lost.wall_s / fault_free.wall_s, 2),
        "lost": lost.lost,
        "duplicated": lost.duplicated,
        **lost.loss,
        **figures,
    }
