"""A broker lost mid-run on a three-broker cluster: wall time as a ratio to a fault-free run,
and results lost / duplicated, over PLAINTEXT and over SASL_SSL.

    .venv/bin/python benchmarks/broker_loss.py [--slots 2] [--rounds 1]
        [--only PLAINTEXT,SASL_SSL]

Starts a fresh three-broker cluster (``deploy/kafka.sh start --brokers 3 --secure`` in a
temporary state dir: replication 3, min.insync.replicas 2, PLAINTEXT and SASL_SSL listeners).
For each protocol and round, with every client over that protocol: a fault-free run, then the
same run losing a broker (tests/broker_loss.py: the broker leading the most of the run's
partitions SIGKILLed once a tenth of the results is stored, started again once the run goes
on without it), each on a fresh pipeline. The run is the chaos suite's 30 rows (450 results)
on a scripted double serving ``--slots`` calls at once, 0.05 s each (the default, 40 calls/s,
makes a fault-free run of ~40 s: Kafka's own failover, 9-12 s, is a fixed cost, and a run
much shorter than it measures mostly that).

Prints a line per run pair: fault-free wall s, broker-loss wall s, their ratio, results lost
and duplicated, whether the metrics (``perg score``) are the same, kill to failover (every
leadership off the dead broker: Kafka's controller) and kill to the run storing results
again; then the median ratio per protocol.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from broker_loss import scenario  # noqa: E402
from kafka_cluster import PROTOCOLS, kafka_cluster_session  # noqa: E402

COLUMNS = (
    f"{'protocol':<10} {'round':>5} {'fault-free s':>12} {'broker-loss s':>13} {'ratio':>6} "
    f"{'lost':>5} {'dup':>4} {'metrics':>7} {'failover s':>10} {'progress s':>10} {'broker':>6}"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=2, help="the double's calls at once")
    parser.add_argument("--rounds", type=int, default=1, help="run pairs per protocol")
    parser.add_argument("--only", default=",".join(PROTOCOLS), help="protocols, comma-separated")
    args = parser.parse_args()
    protocols = [p.strip().upper() for p in args.only.split(",") if p.strip()]
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        parser.error(f"--only: not one of {', '.join(PROTOCOLS)}: {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="perg-bench-broker-loss-"))
    ratios: dict[str, list[float]] = {p: [] for p in protocols}
    print(
        f"broker loss, 3 brokers (replication 3, min.insync.replicas 2), 30 rows / 450 "
        f"results, double {args.slots} slots x 0.05 s",
        flush=True,
    )
    print(COLUMNS, flush=True)
    with kafka_cluster_session() as cluster:
        for round_ in range(1, args.rounds + 1):
            for protocol in protocols:
                client = cluster.over(protocol)
                name = f"{protocol}-{round_}"
                with scenario(
                    client, work / f"{name}-ok", lose_broker=False, slots=args.slots
                ) as reference:
                    pass
                with scenario(
                    client, work / f"{name}-loss", lose_broker=True, slots=args.slots
                ) as lost:
                    pass
                ratio = lost.wall_s / reference.wall_s
                ratios[protocol].append(ratio)
                print(
                    f"{protocol:<10} {round_:>5} {reference.wall_s:>12.1f} {lost.wall_s:>13.1f} "
                    f"{ratio:>6.2f} {lost.lost:>5} {lost.duplicated:>4} "
                    f"{'same' if lost.metrics == reference.metrics else 'DIFFER':>7} "
                    f"{lost.loss['kill_to_failover_s']:>10.1f} "
                    f"{lost.loss['kill_to_progress_s']:>10.1f} {lost.loss['broker']:>6}",
                    flush=True,
                )
    shutil.rmtree(work, ignore_errors=True)
    for protocol, values in ratios.items():
        median = statistics.median(values)
        print(
            f"{protocol}: broker-loss wall / fault-free wall, median of {len(values)}: {median:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
