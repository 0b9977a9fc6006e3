"""Live progress of runs, as the sink reports it: one bar per stage, retries and errors."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from perg.textsafe import printable

# (label, status key of the count, status key of the expected total)
STAGES = (
    ("generate", "generated", "expected_generations"),
    ("align", "aligned", "expected_aligned"),
    ("judge + store", "results_stored", "expected_results"),
)
# steps (a generation, an alignment or a stored result: each about one model call) done
# while watching before the time left is estimated from their rate
MIN_STEPS_FOR_ESTIMATE = 6
# what changes while a run makes progress
PROGRESS_KEYS = (*(key for _, key, _ in STAGES), "retries", "dead_letters", "done")


class RunProgress:
    """Bars for one run's stages, with throughput measured between updates."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.started = time.monotonic()
        self.bars = Progress(
            TextColumn("{task.description:>14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>9}"),
            TimeElapsedColumn(),
        )
        self.tasks = {
            label: self.bars.add_task(label, total=None, rate="") for label, _, _ in STAGES
        }
        self.footer = ""
        self.first_seen: dict[str, int] = {}
        self.left_s: float | None = None

    def update(self, status: Mapping[str, Any]) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        steps_done = steps_total = 0
        for label, done_key, total_key in STAGES:
            done, total = int(status[done_key]), int(status[total_key])
            steps_done, steps_total = steps_done + done, steps_total + total
            since_start = done - self.first_seen.setdefault(label, done)
            self.bars.update(
                self.tasks[label],
                completed=done,
                total=total or None,
                visible=total > 0,
                rate=_rate(since_start / elapsed),
            )
        # at the rate steps of every stage have been done since this started watching (the
        # rate of stored results alone is low while the pipeline fills); none before a few
        done_since_start = steps_done - sum(self.first_seen.values())
        self.left_s = (
            (steps_total - steps_done) * elapsed / done_since_start
            if done_since_start >= MIN_STEPS_FOR_ESTIMATE and not _finished(status)
            else None
        )
        self.footer = (
            f"run {self.run_id} · model {status['model']} · protocol {status['protocol']} · "
            f"retries {status['retries']} · dead letters {status['dead_letters']}"
            + (" · done" if status["done"] else "")
            + _time_left(self.left_s)
        )

    def renderable(self) -> Group:
        return Group(Text(printable(self.footer)), self.bars)


def _rate(per_second: float) -> str:
    return f"{per_second:.1f}/s" if per_second >= 1 else f"{per_second * 60:.1f}/min"


def status_table(statuses: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(
        "run",
        "model",
        "lineage",
        "version",
        "protocol",
        "created",
        "stored",
        "retries",
        "dead",
        "state",
    )
    for s in statuses:
        state = s.get("state") or ("done" if s["done"] else "running")
        if state == "cancelled":
            state = "cancelled (partial)"
        cells = (
            s["run_id"],
            s["model"],
            s.get("lineage") or "-",
            s.get("version") or "-",
            s["protocol"],
            s["created_at"],
            f"{s['results_stored']}/{s['expected_results']}",
            s["retries"],
            s["dead_letters"],
            state,
        )
        table.add_row(*(Text(printable(str(cell))) for cell in cells))
    return table


def follow(
    fetch: Callable[[], Mapping[str, Any] | None],
    run_id: str,
    *,
    console: Console,
    timeout_s: float | None = None,
    poll_s: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
    line_every_s: float = 10.0,
) -> Mapping[str, Any] | None:
    """Show live progress until the run is done or cancelled, the timeout passes or
    ``should_stop()``.

    On a terminal: live bars. Elsewhere (a CI log, a pipe): one plain line every
    ``line_every_s`` seconds and when the run is done. Returns the last status (None when the
    sink never knew the run)."""
    progress = RunProgress(run_id)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    next_line = time.monotonic()
    status = None
    live = Live(progress.renderable(), console=console, refresh_per_second=4)
    with live if console.is_terminal else nullcontext():
        while True:
            status = fetch() or status
            if status is not None:
                progress.update(status)
                live.update(progress.renderable())
            if not console.is_terminal and (
                time.monotonic() >= next_line or (status is not None and _finished(status))
            ):
                console.print(progress_line(run_id, status, progress.left_s), soft_wrap=True)
                next_line = time.monotonic() + line_every_s
            if status is not None and _finished(status):
                return status
            if should_stop() or (deadline is not None and time.monotonic() >= deadline):
                return status
            time.sleep(poll_s)


def _finished(status: Mapping[str, Any]) -> bool:
    return bool(status["done"]) or status.get("state") == "cancelled"


def progress_line(
    run_id: str, status: Mapping[str, Any] | None, left_s: float | None = None
) -> str:
    """One line of a run's progress, for output that is not a terminal; ``left_s``: about how
    long the rest takes (:attr:`RunProgress.left_s`)."""
    if status is None:
        return printable(f"run {run_id}: not known to the store yet")
    counts = " · ".join(
        f"{label} {status[done_key]}/{status[total_key]}"
        for label, done_key, total_key in STAGES
        if int(status[total_key]) > 0
    )
    return printable(
        f"run {run_id}: {counts} · retries {status['retries']} · "
        f"dead letters {status['dead_letters']}"
        + (" · cancelled" if status.get("state") == "cancelled" else "")
        + (" · done" if status["done"] else "")
        + _time_left(left_s)
    )


def _time_left(left_s: float | None) -> str:
    if left_s is None:
        return ""
    return f" · ~{left_s:.0f} s left" if left_s < 90 else f" · ~{left_s / 60:.0f} min left"
