"""``perg cancel RUN``: stop a run; its stored results stay queryable, marked partial.

Exit codes: 0 cancelled; 2 unknown run; 3 Kafka or the sink cannot be reached.
"""

from __future__ import annotations

import argparse
import sys

from perg.cancel import cancel_run
from perg.cli.client import SinkClient
from perg.config import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cancel",
        help="cancel a run: the workers stop calling models for it",
        description="Cancel a run: within seconds the workers stop calling models for it "
        "(calls in flight may complete); perg status says cancelled, its stored results stay "
        "queryable and are marked partial. Exit codes: 0 cancelled, 2 unknown run, 3 Kafka or "
        "the sink unreachable.",
    )
    parser.add_argument("run", help="run id")
    parser.add_argument("--reason", default="perg cancel", help="why, recorded with it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    stored = cancel_run(settings, SinkClient(settings), args.run, args.reason)
    if not stored:
        print("perg cancel: published; the sink has not stored it yet (is it running?)",
              file=sys.stderr)  # fmt: skip
    print(f"cancelled {args.run}")
    return 0
