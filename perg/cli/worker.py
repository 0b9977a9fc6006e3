"""``perg worker generator|aligner|judge|sink``: run one service in this process."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import replace
from pathlib import Path

from perg.config import Settings, bootstrap_servers
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
        "model calls are bounded by --max-in-flight",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        help="model calls on the wire at once per endpoint (default $PERG_MODEL_MAX_IN_FLIGHT, "
        "else 64)",
    )
    parser.add_argument(
        "--instance",
        help="a name unique within the service and stable across restarts (default "
        "$PERG_WORKER_INSTANCE): static group membership, so a restarted worker resumes its "
        "partitions at once",
    )
    parser.set_defaults(func=run)


def worker_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """``settings`` with the flags given applied: a flag overrides its setting."""
    if args.bootstrap:
        settings = replace(settings, kafka=bootstrap_servers(args.bootstrap, "--bootstrap"))
    if args.db:
        settings = replace(settings, db=Path(args.db))
    if args.in_flight is not None:
        settings = replace(settings, worker_in_flight=args.in_flight)
    if args.instance:
        settings = replace(settings, worker_instance=args.instance)
    if args.max_in_flight is not None:
        client = replace(settings.model_client, max_in_flight=args.max_in_flight)
        settings = replace(settings, model_client=client)
    return settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    from services._runtime import WorkerOptions, run_worker

    settings = worker_settings(args, settings)
    options = WorkerOptions.of(settings)  # a bad value is an InputError: perg.cli reports it
    module = importlib.import_module(service_module(args.service))
    run_worker(module.build_app(settings, options))
    return 0
