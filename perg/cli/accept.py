"""``perg accept RUN [--note TEXT]``: record a complete run as its lineage's accepted state.

Exit codes: 0 accepted; 2 unknown run, a run without a lineage, an incomplete or cancelled
run; 3 Kafka or the sink cannot be reached.
"""

from __future__ import annotations

import argparse
import sys

from perg.cli.client import SinkClient
from perg.config import Settings
from perg.lineage import accept_run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "accept",
        help="record a complete run as the accepted state of its lineage",
        description="Record a complete run as the accepted state of its lineage (the "
        "reference of perg gate --lineage). Acceptances are an append-only history. Exit "
        "codes: 0 accepted, 2 unknown, incomplete or cancelled run (or no lineage), 3 Kafka "
        "or the sink unreachable.",
    )
    parser.add_argument("run", help="run id")
    parser.add_argument("--note", default="", help="why (recorded with the acceptance)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    acceptance, stored = accept_run(settings, SinkClient(settings), args.run, args.note)
    if not stored:
        print("perg accept: published; the sink has not stored it yet (is it running?)",
              file=sys.stderr)  # fmt: skip
    print(f"accepted {acceptance.run_id} in lineage {acceptance.lineage}")
    return 0
