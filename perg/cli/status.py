"""``perg status [RUN] [--wait]``: progress of runs, from the sink (or the results file)."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from perg.config import Settings
from perg.live.client import SinkBusy, SinkClient
from perg.progress import follow, status_table


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("status", help="progress of one run or of all runs")
    parser.add_argument("run", nargs="?", help="run id (default: all runs)")
    parser.add_argument("--wait", action="store_true", help="block until the run is stored")
    parser.add_argument("--follow", action="store_true", help="live progress bars until done")
    parser.add_argument("--timeout", type=float, help="seconds to wait (with --wait)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    client = SinkClient(Settings.load())
    console = Console(stderr=True)
    # piped output gets whole run ids rather than 80-column truncation
    out = Console() if sys.stdout.isatty() else Console(width=200)
    if args.run is None:
        out.print(status_table(client.statuses()))
        return 0

    def fetch_through_restarts() -> dict[str, object] | None:
        try:
            return client.status(args.run)
        except SinkBusy as exc:  # a sink restarting holds the file: ask again
            print(f"perg status: {exc}; retrying", file=sys.stderr)
            return None

    if not (args.wait or args.follow):
        status = client.status(args.run)
        if status is None:
            print(f"perg status: unknown run {args.run!r}", file=sys.stderr)
            return 2
        out.print(status_table([status]))
        return 0
    last = follow(fetch_through_restarts, args.run, console=console, timeout_s=args.timeout)
    if last is None:
        print(f"perg status: run {args.run!r} never appeared", file=sys.stderr)
        return 1
    if not last["done"] and last.get("state") == "cancelled":
        print(f"perg status: run cancelled; {last['results_stored']}/"
              f"{last['expected_results']} results stored (partial)", file=sys.stderr)  # fmt: skip
        return 1
    if not last["done"]:
        print(f"perg status: timed out; {last['results_stored']}/{last['expected_results']} "
              "results stored", file=sys.stderr)  # fmt: skip
        return 1
    return 0
