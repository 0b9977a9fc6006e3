"""``perg status [RUN] [--wait]``: progress of runs, from the sink (or the results file)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping

from rich.console import Console

from perg.cli.client import SinkBusy, SinkClient
from perg.config import Settings
from perg.progress import PROGRESS_KEYS, follow, status_table

DEFAULT_WAIT_S = 86400.0
DEFAULT_STALL_S = 900.0


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("status", help="progress of one run or of all runs")
    parser.add_argument("run", nargs="?", help="run id (default: all runs)")
    parser.add_argument("--wait", action="store_true", help="block until the run is stored")
    parser.add_argument("--follow", action="store_true", help="live progress bars until done")
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_WAIT_S,
        help=f"seconds to wait with --wait/--follow (default {DEFAULT_WAIT_S:g}, one day)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=positive_seconds,
        default=DEFAULT_STALL_S,
        help="with --wait/--follow: give up when nothing new is stored for this many seconds "
        f"(default {DEFAULT_STALL_S:g})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    client = SinkClient(settings)
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
    stall = StallWatch(args.stall_timeout)

    def fetch_watched() -> dict[str, object] | None:
        status = fetch_through_restarts()
        stall.saw(status)
        return status

    last = follow(
        fetch_watched,
        args.run,
        console=console,
        timeout_s=args.timeout,
        should_stop=stall.stalled,
    )
    if last is None:
        print(f"perg status: run {args.run!r} never appeared", file=sys.stderr)
        return 1
    if not last["done"] and last.get("state") == "cancelled":
        print(f"perg status: run cancelled; {last['results_stored']}/"
              f"{last['expected_results']} results stored (partial)", file=sys.stderr)  # fmt: skip
        return 1
    if not last["done"]:
        why = (
            f"nothing new stored for {args.stall_timeout:g} s (--stall-timeout)"
            if stall.stalled()
            else f"timed out after {args.timeout:g} s (--timeout)"
        )
        print(f"perg status: {why}; {last['results_stored']}/{last['expected_results']} "
              "results stored", file=sys.stderr)  # fmt: skip
        return 1
    return 0


class StallWatch:
    """Whether a followed run has shown no progress for ``limit_s`` seconds."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._last: tuple[object, ...] | None = None
        self._changed = time.monotonic()

    def saw(self, status: Mapping[str, object] | None) -> None:
        counts = None if status is None else tuple(status[key] for key in PROGRESS_KEYS)
        if counts != self._last:
            self._last, self._changed = counts, time.monotonic()

    def stalled(self) -> bool:
        return time.monotonic() - self._changed >= self.limit_s
