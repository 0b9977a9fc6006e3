"""A run's progress off a terminal: one line per update, with about how long the rest takes
once a few results are stored."""

from __future__ import annotations

from typing import Any

from perg.progress import MIN_STORED_FOR_ESTIMATE, RunProgress, progress_line


def status(stored: int, *, expected: int = 60, done: bool = False) -> dict[str, Any]:
    return {
        "model": "m",
        "protocol": "paper",
        "generated": stored,
        "expected_generations": expected,
        "aligned": 0,
        "expected_aligned": 0,
        "results_stored": stored,
        "expected_results": expected,
        "retries": 0,
        "dead_letters": 0,
        "done": done,
    }


def test_no_estimate_before_a_few_results_are_stored_while_watching() -> None:
    progress = RunProgress("r")
    progress.update(status(10))  # stored before watching: no rate yet
    progress.update(status(10 + MIN_STORED_FOR_ESTIMATE - 1))
    assert progress.left_s is None
    assert progress_line("r", status(12), progress.left_s).endswith("dead letters 0")


def test_the_time_left_is_the_rest_at_the_rate_seen() -> None:
    progress = RunProgress("r")
    progress.update(status(0))
    progress.started -= 100  # 100 s of watching
    progress.update(status(20))  # 20 results in 100 s: 40 more take ~200 s
    assert progress.left_s is not None and 195 < progress.left_s < 205
    line = progress_line("r", status(20), progress.left_s)
    assert line.endswith("dead letters 0 · ~3 min left")
    assert "~3 min left" in progress.footer
    progress.update(status(58))
    assert progress_line("r", status(58), progress.left_s).endswith(" s left")


def test_a_finished_run_has_no_estimate() -> None:
    progress = RunProgress("r")
    progress.update(status(0))
    progress.started -= 10
    progress.update(status(60, done=True))
    assert progress.left_s is None
    assert progress_line("r", status(60, done=True), None).endswith(" · done")


def test_a_cancelled_run_has_no_estimate() -> None:
    progress = RunProgress("r")
    progress.update(status(0))
    progress.started -= 10
    progress.update({**status(20), "state": "cancelled"})
    assert progress.left_s is None
