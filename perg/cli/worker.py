"""``perg worker generator|aligner|judge|sink``: run one service in this process."""

from __future__ import annotations

import argparse
import importlib
import os

SERVICES = ("generator", "aligner", "judge", "sink")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a service (faust worker); start several to share a consumer group",
        description="Run one PERG Stream service as a faust worker in this process.",
    )
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default $PERG_KAFKA)")
    parser.add_argument("--db", help="DuckDB results file, sink only (default $PERG_DB)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Flags become the environment the service reads its Settings from.
    if args.bootstrap:
        os.environ["PERG_KAFKA"] = args.bootstrap
    if args.db:
        os.environ["PERG_DB"] = args.db
    from services._runtime import run_worker

    module = importlib.import_module(f"services.{args.service}")
    run_worker(module.service)
    return 0
