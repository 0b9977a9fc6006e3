"""``perg worker generator|aligner|judge|sink``: run one service in this process."""

from __future__ import annotations

import argparse
import importlib
import os

from services import SERVICES, service_module


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a service; start several of one service to share its consumer group",
        description=(
            "Run one PERG Stream service in this process until SIGTERM/SIGINT (then it "
            "finishes or gives back the messages in progress and commits)."
        ),
    )
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default $PERG_KAFKA)")
    parser.add_argument("--db", help="DuckDB results file, sink only (default $PERG_DB)")
    parser.add_argument(
        "--in-flight",
        type=int,
        help="messages in progress at once (default $PERG_WORKER_IN_FLIGHT, else the "
        "service's: generator 128 rows, aligner 128, judge 256, sink batches of 1000); the "
        "model calls are bounded by each endpoint's max_in_flight",
    )
    parser.add_argument(
        "--instance",
        help="a name unique within the service and stable across restarts (default "
        "$PERG_WORKER_INSTANCE): static group membership, so a restarted worker resumes its "
        "partitions at once",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Flags become the environment the service reads its Settings from.
    if args.bootstrap:
        os.environ["PERG_KAFKA"] = args.bootstrap
    if args.db:
        os.environ["PERG_DB"] = args.db
    from dataclasses import replace

    from perg.config import Settings
    from services._runtime import WorkerOptions, run_worker

    options = WorkerOptions.load()  # a bad value is an InputError: perg.cli reports it
    if args.in_flight is not None:
        options = replace(options, in_flight=args.in_flight)
    if args.instance:
        options = replace(options, instance=args.instance)
    module = importlib.import_module(service_module(args.service))
    run_worker(module.build_app(Settings.load(), options))
    return 0
